// Where a kernel parameter's fields sit in its PTX .param block, so that a [KernelInfo] WideViews entry such as
// "w.Data:16" can be matched to the vector accesses the PTX lint finds (which it knows as "parameter w, byte 0").
// ILGPU passes a struct parameter as one .param byte array with its fields in declaration order at their natural
// alignment; an ArrayView is 16 bytes (pointer, then 64-bit length). The lint checks the size computed here against
// the .param size in the PTX, so a layout rule that stops holding fails loudly instead of matching the wrong field.
using System.Reflection;
using System.Text.Json.Serialization;
using ILGPU;

namespace ILGpuMoE.Ptx;

/// <summary>A declared wide view: "w.Data:16" is parameter w, byte offset 0 of it, 16-byte accesses.</summary>
public sealed record WideViewDeclaration(string View, string Parameter, int Offset, int Bytes, int ParameterBytes);

/// <summary>
/// One scalar slot of a kernel parameter as it sits in the parameter buffer: "w.words.ptr" (a device pointer), its
/// "w.words.length" (elements, 64-bit), "dim" (i32). Offset is from the start of the parameter; Element names what a
/// pointer points to (the C# element type) and ElementBytes its size, for pointers only.
/// </summary>
public sealed record ParamSlot(string Name, string Type, int Offset, int Bytes,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Element = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] int ElementBytes = 0);

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

    /// <summary>
    /// The scalar slots of a parameter of type <paramref name="t"/>, depth first in declaration order, named by their
    /// field path under <paramref name="name"/>, at the offsets <see cref="SizeAlign"/> implies. An ArrayView is two
    /// slots: "ptr" (device address of element 0) and "length" (elements, i64).
    /// </summary>
    public static IReadOnlyList<ParamSlot> Slots(Type t, string name)
    {
        var slots = new List<ParamSlot>();
        AddSlots(t, name, 0, slots);
        return slots;
    }

    private static void AddSlots(Type t, string name, int offset, List<ParamSlot> slots)
    {
        if (IsView(t))
        {
            var element = t.GetGenericArguments()[0];
            slots.Add(new ParamSlot(name + ".ptr", "ptr", offset, 8, element.Name, SizeAlign(element).Size));
            slots.Add(new ParamSlot(name + ".length", "i64", offset + 8, 8));
            return;
        }

        if (ScalarName(t) is { } scalar)
        {
            slots.Add(new ParamSlot(name, scalar, offset, SizeAlign(t).Size));
            return;
        }

        int at = 0;
        foreach (var f in Fields(t))
        {
            var (size, align) = SizeAlign(f.FieldType);
            at = (at + align - 1) / align * align;
            AddSlots(f.FieldType, name + "." + FieldName(f), offset + at, slots);
            at += size;
        }
    }

    /// <summary>"&lt;words&gt;P" (a primary-constructor capture) and "&lt;X&gt;k__BackingField" read as "words" and "X".</summary>
    private static string FieldName(FieldInfo f) =>
        f.Name.StartsWith('<') && f.Name.IndexOf('>', StringComparison.Ordinal) is > 1 and var end ? f.Name[1..end] : f.Name;

    /// <summary>The C-like name of a scalar type ("f32", "i32", "u8", "f16"...); null for a struct.</summary>
    private static string? ScalarName(Type t)
    {
        if (t.IsEnum)
            return ScalarName(Enum.GetUnderlyingType(t));
        if (t == typeof(ILGPU.Half))
            return "f16";
        return Type.GetTypeCode(t) switch
        {
            TypeCode.Boolean => "bool8",
            TypeCode.SByte => "i8",
            TypeCode.Byte => "u8",
            TypeCode.Int16 => "i16",
            TypeCode.UInt16 or TypeCode.Char => "u16",
            TypeCode.Int32 => "i32",
            TypeCode.UInt32 => "u32",
            TypeCode.Int64 => "i64",
            TypeCode.UInt64 => "u64",
            TypeCode.Single => "f32",
            TypeCode.Double => "f64",
            TypeCode.Object => null,
            _ => throw new NotSupportedException($"kernel parameter type {t.Name} ({Type.GetTypeCode(t)}) has no layout rule"),
        };
    }

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
