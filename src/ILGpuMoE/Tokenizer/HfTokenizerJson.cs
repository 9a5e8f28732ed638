using System.Text;
using System.Text.Json;

namespace ILGpuMoE.Tokenizer;

/// <summary>
/// Writes a Mistral-style Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) for a SentencePiece-BPE
/// vocabulary: Prepend('▁') + Replace(' ', '▁') normalizer, BPE with byte_fallback and fuse_unk, a "&lt;s&gt; $A"
/// post-processor, and the Replace / ByteFallback / Fuse / Strip decoder, as in Mixtral-8x7B's files.
/// Ids 0, 1, 2 must be &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;.
/// </summary>
public static class HfTokenizerJson
{
    /// <summary>Mixtral-Instruct's chat template.</summary>
    public const string ChatTemplate =
        "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}" +
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}" +
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    public static void Write(string dir, IReadOnlyList<string> pieces, IReadOnlyList<(string Left, string Right)> merges)
    {
        if (pieces.Count < 3 || pieces[0] != "<unk>" || pieces[1] != "<s>" || pieces[2] != "</s>")
            throw new ArgumentException("tokenizer.json: ids 0, 1, 2 must be <unk>, <s>, </s>", nameof(pieces));
        Directory.CreateDirectory(dir);
        using (var stream = File.Create(Path.Combine(dir, "tokenizer.json")))
            WriteJson(stream, pieces, merges, [(0, true), (1, true), (2, true)], unkId: 0, bosId: 1, dummyPrefix: true);
        WriteConfig(dir);
    }

    /// <summary>tokenizer.json alone. <paramref name="added"/>: ids written as added tokens (special or not).</summary>
    internal static void WriteJson(Stream stream, IReadOnlyList<string> pieces, IReadOnlyList<(string Left, string Right)> merges,
        IReadOnlyList<(int Id, bool Special)> added, int unkId, int bosId, bool dummyPrefix)
    {
        var opts = new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var w = new Utf8JsonWriter(stream, opts))
        {
            string bos = pieces[bosId];
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            foreach (var (id, special) in added)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("content", pieces[id]);
                w.WriteBoolean("single_word", false);
                w.WriteBoolean("lstrip", false);
                w.WriteBoolean("rstrip", false);
                w.WriteBoolean("normalized", false);
                w.WriteBoolean("special", special);
                w.WriteEndObject();
            }

            w.WriteEndArray();

            w.WriteStartObject("normalizer");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("normalizers");
            if (dummyPrefix)
            {
                w.WriteStartObject();
                w.WriteString("type", "Prepend");
                w.WriteString("prepend", "\u2581");
                w.WriteEndObject();
            }

            WriteReplace(w, " ", "\u2581");
            w.WriteEndArray();
            w.WriteEndObject();

            w.WriteNull("pre_tokenizer");

            w.WriteStartObject("post_processor");
            w.WriteString("type", "TemplateProcessing");
            w.WriteStartArray("single");
            WriteSpecial(w, bos, 0);
            WriteSequence(w, "A", 0);
            w.WriteEndArray();
            w.WriteStartArray("pair");
            WriteSpecial(w, bos, 0);
            WriteSequence(w, "A", 0);
            WriteSpecial(w, bos, 1);
            WriteSequence(w, "B", 1);
            w.WriteEndArray();
            w.WriteStartObject("special_tokens");
            w.WriteStartObject(bos);
            w.WriteString("id", bos);
            w.WriteStartArray("ids");
            w.WriteNumberValue(bosId);
            w.WriteEndArray();
            w.WriteStartArray("tokens");
            w.WriteStringValue(bos);
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();

            w.WriteStartObject("decoder");
            w.WriteString("type", "Sequence");
            w.WriteStartArray("decoders");
            WriteReplace(w, "\u2581", " ");
            w.WriteStartObject();
            w.WriteString("type", "ByteFallback");
            w.WriteEndObject();
            w.WriteStartObject();
            w.WriteString("type", "Fuse");
            w.WriteEndObject();
            if (dummyPrefix)
            {
                w.WriteStartObject();
                w.WriteString("type", "Strip");
                w.WriteString("content", " ");
                w.WriteNumber("start", 1);
                w.WriteNumber("stop", 0);
                w.WriteEndObject();
            }

            w.WriteEndArray();
            w.WriteEndObject();

            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            w.WriteString("unk_token", pieces[unkId]);
            w.WriteNull("continuing_subword_prefix");
            w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", true);
            w.WriteBoolean("byte_fallback", true);
            w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            var seen = new HashSet<string>();
            for (int id = 0; id < pieces.Count; id++)
            {
                if (!seen.Add(pieces[id]))
                    throw new ArgumentException($"tokenizer.json: piece \"{pieces[id]}\" (id {id}) appears twice", nameof(pieces));
                w.WriteNumber(pieces[id], id);
            }

            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (left, right) in merges)
            {
                if (!seen.Contains(left) || !seen.Contains(right) || !seen.Contains(left + right))
                    throw new ArgumentException($"tokenizer.json: merge \"{left} {right}\" uses or makes a piece outside the vocabulary", nameof(merges));
                w.WriteStringValue(left + " " + right);
            }

            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
    }

    private static void WriteConfig(string dir)
    {
        var config = new StringBuilder();
        config.Append("{\n");
        config.Append("  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n");
        config.Append("  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\",\n  \"pad_token\": null,\n");
        config.Append("  \"chat_template\": ").Append(JsonSerializer.Serialize(ChatTemplate)).Append(",\n");
        config.Append("  \"clean_up_tokenization_spaces\": false,\n  \"legacy\": true,\n");
        config.Append("  \"model_max_length\": 1000000000000000019884624838656,\n  \"sp_model_kwargs\": {},\n");
        config.Append("  \"spaces_between_special_tokens\": false,\n  \"tokenizer_class\": \"LlamaTokenizer\",\n");
        config.Append("  \"use_default_system_prompt\": false\n}\n");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config.ToString());
    }

    private static void WriteReplace(Utf8JsonWriter w, string from, string to)
    {
        w.WriteStartObject();
        w.WriteString("type", "Replace");
        w.WriteStartObject("pattern");
        w.WriteString("String", from);
        w.WriteEndObject();
        w.WriteString("content", to);
        w.WriteEndObject();
    }

    private static void WriteSpecial(Utf8JsonWriter w, string id, int typeId)
    {
        w.WriteStartObject();
        w.WriteStartObject("SpecialToken");
        w.WriteString("id", id);
        w.WriteNumber("type_id", typeId);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    private static void WriteSequence(Utf8JsonWriter w, string id, int typeId)
    {
        w.WriteStartObject();
        w.WriteStartObject("Sequence");
        w.WriteString("id", id);
        w.WriteNumber("type_id", typeId);
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
