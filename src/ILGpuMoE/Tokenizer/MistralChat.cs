namespace ILGpuMoE.Tokenizer;

/// <summary>
/// Mistral / Mixtral-Instruct's prompt format: BOS + "[INST] " + prompt + " [/INST]". Hugging Face's chat
/// template renders "&lt;s&gt;[INST] prompt [/INST]" and encodes it without adding specials; the "&lt;s&gt;" is
/// split off as a special token and the rest gets the dummy '▁', which is what Encode(text, addBos: true) does.
/// </summary>
public static class MistralChat
{
    /// <summary>"[INST] prompt [/INST]" (the text after BOS).</summary>
    public static string WrapText(string prompt) => "[INST] " + prompt + " [/INST]";

    /// <summary>Token ids of BOS + "[INST] prompt [/INST]", ready for generation.</summary>
    public static IReadOnlyList<int> Wrap(ITextTokenizer tokenizer, string prompt) =>
        tokenizer.Encode(WrapText(prompt), addBos: true);
}
