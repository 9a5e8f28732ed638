using ILGpuMoE.Model;

namespace ILGpuMoE.Tests.Model;

/// <summary>
/// Each family's chat format (ModelFamily.ChatPrompt over a conversation): the expected strings are the families'
/// instruct templates rendered by hand for these messages (Mistral's from models/mixtral-demo/tokenizer_config.json;
/// ChatML; Tülu; DeepSeek-V3's; harmony). One user turn is what `generate --chat` has always sent.
/// </summary>
public class ChatFormatTests
{
    private static ChatMessage S(string c) => new(ChatRole.System, c);

    private static ChatMessage U(string c) => new(ChatRole.User, c);

    private static ChatMessage A(string c) => new(ChatRole.Assistant, c);

    private static ModelFamily Family(string modelType) => ModelFamilies.ByModelType(modelType)!;

    private static readonly ChatMessage[] Conversation = [S("Be brief."), U("Hi"), A("Hello."), U("Why?")];

    [TestCase("mixtral", "[INST] p q [/INST]", true)]
    [TestCase("qwen2_moe", "<|im_start|>user\np q<|im_end|>\n<|im_start|>assistant\n", false)]
    [TestCase("qwen3_moe", "<|im_start|>user\np q<|im_end|>\n<|im_start|>assistant\n", false)]
    [TestCase("olmoe", "<|endoftext|><|user|>\np q\n<|assistant|>\n", false)]
    [TestCase("deepseek_v3", "<｜User｜>p q<｜Assistant｜>", true)]
    public void OneUserTurnIsTheFamilysSinglePromptForm(string family, string expected, bool bos)
    {
        Assert.That(Family(family).ChatPrompt("p q"), Is.EqualTo((expected, bos)));
        Assert.That(Family(family).ChatPrompt([U("p q")]), Is.EqualTo((expected, bos)));
    }

    [TestCase("mixtral", "[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Why? [/INST]", true)]
    [TestCase("qwen2_moe", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", false)]
    [TestCase("qwen3_moe", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n", false)]
    [TestCase("olmoe", "<|endoftext|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.<|endoftext|>\n<|user|>\nWhy?\n<|assistant|>\n", false)]
    [TestCase("deepseek_v3", "Be brief.<｜User｜>Hi<｜Assistant｜>Hello.<｜end▁of▁sentence｜><｜User｜>Why?<｜Assistant｜>", true)]
    public void AConversationIsRenderedInTheFamilysFormat(string family, string expected, bool bos) =>
        Assert.That(Family(family).ChatPrompt(Conversation), Is.EqualTo((expected, bos)));

    [Test]
    public void GptOssPutsSystemTextInADeveloperMessageAfterItsOwnSystemMessage()
    {
        var (text, bos) = Family("gpt_oss").ChatPrompt(Conversation);
        Assert.That(bos, Is.False);
        Assert.That(text, Does.StartWith("<|start|>system<|message|>You are ChatGPT"));
        Assert.That(text, Does.EndWith(
            "<|end|><|start|>developer<|message|># Instructions\n\nBe brief.<|end|>" +
            "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello.<|end|>" +
            "<|start|>user<|message|>Why?<|end|><|start|>assistant"));
        var (single, _) = Family("gpt_oss").ChatPrompt("p");
        Assert.That(single, Does.Not.Contain("developer"), "no developer message without system text");
        Assert.That(single, Does.EndWith("<|end|><|start|>user<|message|>p<|end|><|start|>assistant"));
    }

    [Test]
    public void MistralJoinsSeveralSystemTurnsAndKeepsTrailingSystemTextAsAUserTurn()
    {
        var (text, _) = Family("mixtral").ChatPrompt([S("one"), S("two"), U("q"), A("a"), S("later")]);
        Assert.That(text, Is.EqualTo("[INST] one\n\ntwo\n\nq [/INST]a</s>[INST] later [/INST]"));
    }

    [Test]
    public void AnEmptyConversationIsRefusedByEveryFamily()
    {
        foreach (var family in ModelFamilies.All)
            Assert.Throws<ArgumentException>(() => family.ChatPrompt(Array.Empty<ChatMessage>()), family.ModelType);
    }
}
