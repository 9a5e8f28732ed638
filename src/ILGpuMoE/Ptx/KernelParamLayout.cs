// Where a kernel parameter's fields sit in its PTX .param block, so that a [KernelInfo] WideViews entry such as
// "w.Data:16" can be matched to the vector accesses the PTX lint finds (which it knows as "parameter w, byte 0").
// ILGPU passes a struct parameter as one .param byte array with its fields in declaration order at their natural
// alignment; an ArrayView is 16 bytes (pointer, then 64-bit length). The lint checks the size computed here against
// the .param size in the PTX, so a layout rule that stops holding fails loudly instead of matching the wrong field.
using System.Reflection;
using ILGPU;

namespace ILGpuMoE.Ptx;

/// <summary>A declared wide view: "w.Data:16" is parameter w, byte offset 0 of it, 16-byte accesses.</summary>
public sealed record WideViewDeclaration(string View, string Parameter, int Offset, int Bytes, int ParameterBytes);

public static class KernelParamLayout
{
    public static IReadOnlyList<WideViewDeclaration> Resolve(MethodInfo kernel, IReadOnlyList<string> declarations)
    {
        var result = new List<WideViewDeclaration>();
        foreach (var d in declarations)
        {
            int colon = d.LastIndexOf(':');
            if (colon < 0 || !int.TryParse(d[(colon + 1)..], out int bytes) || bytes is not (4 or 8 or 16))
                throw new ArgumentException($"{kernel.Name}: WideViews entry '{d}' must be 'param[.field]:bytes' with bytes 4, 8 or 16");
            string path = d[..colon];
            var parts = path.Split('.');
            var param = kernel.GetParameters().FirstOrDefault(p => p.Name == parts[0])
                ?? throw new ArgumentException($"{kernel.Name}: WideViews entry '{d}' names no parameter");
            var type = param.ParameterType;
            int offset = 0;
            foreach (var field in parts.Skip(1))
            {
                var (fieldOffset, fieldType) = Field(type, field)
                    ?? throw new ArgumentException($"{kernel.Name}: WideViews entry '{d}': {type.Name} has no field {field}");
                offset += fieldOffset;
                type = fieldType;
            }

            if (!IsView(type))
                throw new ArgumentException($"{kernel.Name}: WideViews entry '{d}' is a {type.Name}, not an ArrayView");
            result.Add(new WideViewDeclaration(path, parts[0], offset, bytes, SizeAlign(param.ParameterType).Size));
        }

        return result;
    }

    private static (int Offset, Type Type)? Field(Type owner, string name)
    {
        int offset = 0;
        foreach (var f in Fields(owner))
        {
            var (size, align) = SizeAlign(f.FieldType);
            offset = (offset + align - 1) / align * align;
            if (f.Name == name)
                return (offset, f.FieldType);
            offset += size;
        }

        return null;
    }

    private static IEnumerable<FieldInfo> Fields(Type t) =>
        t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic).OrderBy(f => f.MetadataToken);

    private static bool IsView(Type t) => t.IsGenericType && t.GetGenericTypeDefinition() == typeof(ArrayView<>);

    /// <summary>Size and alignment of a type as ILGPU lays it out in a kernel parameter.</summary>
    public static (int Size, int Align) SizeAlign(Type t)
    {
        if (IsView(t))
            return (16, 8);
        if (t.IsEnum)
            return SizeAlign(Enum.GetUnderlyingType(t));
        if (t.IsPrimitive || t == typeof(ILGPU.Half))
        {
            int s = t == typeof(bool) ? 1 : System.Runtime.InteropServices.Marshal.SizeOf(t == typeof(char) ? typeof(ushort) : t);
            return (s, s);
        }

        int offset = 0, align = 1;
        foreach (var f in Fields(t))
        {
            var (fs, fa) = SizeAlign(f.FieldType);
            offset = (offset + fa - 1) / fa * fa + fs;
            align = Math.Max(align, fa);
        }

        return ((offset + align - 1) / align * align, align);
    }
}
