// A conversation as a chat endpoint receives it (system / user / assistant turns), and the one helper every family's
// chat format shares: system turns folded into the next user turn, for the formats that have no system slot.
//
// Why the families render it in C# and not from tokenizer_config.json's chat_template: that template is Jinja, and no
// Jinja engine is available to this runtime; each family's instruct format is well known and small, so each family file
// (Model/Families) writes its own, as its instruct checkpoints' templates render it with the generation prompt.
namespace ILGpuMoE.Model;

/// <summary>Who speaks in a chat turn.</summary>
public enum ChatRole
{
    /// <summary>Instructions for the whole conversation (OpenAI's "system", and its newer "developer").</summary>
    System,

    User,

    Assistant,
}

/// <summary>One turn of a conversation.</summary>
public sealed record ChatMessage(ChatRole Role, string Content)
{
    /// <summary>Throws ArgumentException for an empty conversation or a role outside <see cref="ChatRole"/>.</summary>
    internal static void Check(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
            throw new ArgumentException("a chat needs at least one message");
        foreach (var m in messages)
        {
            ArgumentNullException.ThrowIfNull(m);
            ArgumentNullException.ThrowIfNull(m.Content);
            if (m.Role is not (ChatRole.System or ChatRole.User or ChatRole.Assistant))
                throw new ArgumentException($"chat role {(int)m.Role} is not one of system, user, assistant");
        }
    }

    /// <summary>
    /// For formats without a system turn (Mistral's): each run of system messages is joined to the next user message as
    /// "system\n\nuser" (what Mistral's later templates do); system text with no user turn after it becomes a user turn
    /// of its own. Returns only user and assistant turns.
    /// </summary>
    internal static IReadOnlyList<ChatMessage> FoldSystemIntoUser(IReadOnlyList<ChatMessage> messages)
    {
        var result = new List<ChatMessage>(messages.Count);
        string? pending = null;
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case ChatRole.System:
                    pending = pending is null ? m.Content : pending + "\n\n" + m.Content;
                    break;
                case ChatRole.User:
                    result.Add(pending is null ? m : m with { Content = pending + "\n\n" + m.Content });
                    pending = null;
                    break;
                case ChatRole.Assistant:
                    result.Add(m);
                    break;
                default:
                    throw new ArgumentException($"chat role {(int)m.Role} is not one of system, user, assistant");
            }
        }

        if (pending is not null)
            result.Add(new ChatMessage(ChatRole.User, pending));
        return result;
    }
}
