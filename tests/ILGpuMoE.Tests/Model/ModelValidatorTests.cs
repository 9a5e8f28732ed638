using ILGpuMoE.IO;
using ILGpuMoE.Model;

namespace ILGpuMoE.Tests.Model;

public class ModelValidatorTests
{
    private static ModelConfig Config => ModelConfig.Load(TinyModelFiles.FixtureDir);

    // The fixture's real header, as the IO layer reads it.
    private static List<TensorInfo> FixtureTensors()
    {
        using var checkpoint = Checkpoint.Open(TinyModelFiles.FixtureDir);
        return checkpoint.Tensors.ToList();
    }

    private static ModelValidationException Fails(List<TensorInfo> tensors) =>
        Assert.Throws<ModelValidationException>(() => ModelValidator.Validate(Config, tensors, "/m"))!;

    [Test]
    public void FixturePasses()
    {
        var tensors = FixtureTensors();
        Assert.That(tensors, Has.Count.EqualTo(41));
        Assert.That(ModelValidator.FindProblems(Config, tensors), Is.Empty);
        using var checkpoint = Checkpoint.Open(TinyModelFiles.FixtureDir);
        Assert.DoesNotThrow(() => ModelValidator.Validate(Config, checkpoint));
    }

    [Test]
    public void MissingTensorIsNamed()
    {
        const string name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
        var tensors = FixtureTensors();
        Assert.That(tensors.RemoveAll(t => t.Name == name), Is.EqualTo(1));
        var e = Fails(tensors);
        Assert.That(e.Message, Is.EqualTo($"/m: tensor '{name}' is missing (expected shape [64, 128])"));
    }

    [Test]
    public void WrongShapeNamesTensorExpectedAndActual()
    {
        const string name = "model.layers.0.self_attn.k_proj.weight";
        var tensors = FixtureTensors();
        var i = tensors.FindIndex(t => t.Name == name);
        tensors[i] = tensors[i] with { Shape = [64, 64], ByteLength = 64 * 64 * 4 };
        var e = Fails(tensors);
        Assert.That(e.Message, Is.EqualTo($"/m: tensor '{name}' has shape [64, 64], expected [32, 64]"));
    }

    [Test]
    public void UnsupportedDtypeIsNamed()
    {
        const string name = "model.norm.weight";
        var tensors = FixtureTensors();
        var i = tensors.FindIndex(t => t.Name == name);
        tensors[i] = tensors[i] with { DType = DType.I32 };
        var e = Fails(tensors);
        Assert.That(e.Message, Does.Contain($"tensor '{name}' has dtype I32"));
        Assert.That(e.Message, Does.Contain("F32, F16, BF16"));
    }

    [Test]
    public void ExtraTensorsAreIgnoredAndEveryProblemIsListed()
    {
        var tensors = FixtureTensors();
        tensors.Add(new TensorInfo("model.layers.0.self_attn.rotary_emb.inv_freq", DType.F32, [8], 0, 32));
        Assert.That(ModelValidator.FindProblems(Config, tensors), Is.Empty);

        tensors.RemoveAll(t => t.Name is "lm_head.weight" or "model.embed_tokens.weight");
        var e = Fails(tensors);
        Assert.That(e.Problems, Has.Count.EqualTo(2));
        Assert.That(e.Message, Does.Contain("'model.embed_tokens.weight' is missing").And.Contain("(and 1 more problem)"));
        Assert.That(e.Problems[1], Does.Contain("'lm_head.weight' is missing"));
    }

    [Test]
    public void ExpectedTensorsCoverTheFixtureExactly()
    {
        var expected = ModelTensors.Expected(Config).Select(t => t.Name).Order(StringComparer.Ordinal);
        var stored = FixtureTensors().Select(t => t.Name).Order(StringComparer.Ordinal);
        Assert.That(expected, Is.EqualTo(stored));
    }
}
