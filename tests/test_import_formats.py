"""Importers against implementations no one here wrote: tiny random LLaDA-, Dream- and SMDM-shaped
checkpoints, written with their real tensor names, give the logits of transformers' Llama and
Qwen2 modules run with full (bidirectional) attention, and of an SMDM block written below."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

import maskdiff
from maskdiff.cli import main
from maskdiff.errors import MaskdiffError
from maskdiff.interop.importer import import_checkpoint
from maskdiff.interop.layout import Vocab

transformers = pytest.importorskip("transformers")

D, LAYERS, HEADS, KV_HEADS, HIDDEN = 32, 2, 4, 2, 48


def word_tokenizer(words: list[str], folder) -> None:
    """A tokenizers JSON with one id per word, saved as folder/tokenizer.json."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))


def words(n: int, mask: int | None = None, mask_token: str = "<|mask|>") -> list[str]:
    out = ["<|endoftext|>", *(f"w{i}" for i in range(1, n))]
    if mask is not None:
        out[mask] = mask_token
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def bidirectional_logits(hf_model, ids: torch.Tensor) -> torch.Tensor:
    """A transformers causal LM run over ``ids`` with every position seeing every other one."""
    inner = hf_model.model
    h = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rotary = inner.rotary_emb(h, positions)
    for layer in inner.layers:
        layer.self_attn.is_causal = False
        out = layer(h, attention_mask=None, position_ids=positions, position_embeddings=rotary)
        h = out[0] if isinstance(out, tuple) else out
    return hf_model.lm_head(inner.norm(h))


def random_reference(config_cls, model_cls, rows: int, tied: bool = False, **extra):
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=rows,
        hidden_size=D,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=HIDDEN,
        rms_norm_eps=1e-5,
        rope_theta=5000.0,
        tie_word_embeddings=tied,
        **extra,
    )
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_llada_gives_the_logits_of_a_bidirectional_llama(tmp_path):
    n, mask, rows = 40, 30, 48  # the mask token sits below the last token; rows past the tokenizer are padding
    ref = random_reference(transformers.LlamaConfig, transformers.LlamaForCausalLM, rows)
    src = tmp_path / "llada"
    src.mkdir()
    names = {"model.transformer.wte.weight": ref.model.embed_tokens.weight, "model.transformer.ln_f.weight": ref.model.norm.weight}
    names["model.transformer.ff_out.weight"] = ref.lm_head.weight
    parts = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj"}
    parts |= {"ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
    parts |= {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
    for i, layer in enumerate(ref.model.layers):
        for theirs, ours in parts.items():
            names[f"model.transformer.blocks.{i}.{theirs}.weight"] = layer.get_submodule(ours).weight
    save_file({k: v.detach().contiguous() for k, v in names.items()}, src / "model.safetensors")
    config = {"d_model": D, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "mlp_hidden_size": HIDDEN, "rms_norm_eps": 1e-5}
    config |= {"rope_theta": 5000.0, "vocab_size": rows, "embedding_size": rows, "mask_token_id": mask, "weight_tying": False}
    config |= {"include_qkv_bias": False, "block_type": "llama", "max_sequence_length": 64, "architectures": ["LLaDAModelLM"]}
    (src / "config.json").write_text(json.dumps(config))
    word_tokenizer(words(n, mask, "<|mdm_mask|>"), src)
    assert main(["import", "auto", str(src), "--out", str(tmp_path / "run")]) == 0
    run = maskdiff.load(tmp_path / "run", precision="fp32")
    assert run.mask_id == n - 1 and run.config.data.seq_len == 64
    rows_of = Vocab(n - 1, mask).rows()  # maskdiff id -> the checkpoint's row
    ids = torch.randint(0, n, (2, 11))  # maskdiff ids, the mask (n - 1) included
    expected = bidirectional_logits(ref, rows_of[ids])[..., rows_of[: n - 1]]
    assert relative(run.logits(ids), expected) < 1e-5
    # the tokenizer moved with the rows: the last token took the mask's id, the mask is gone
    assert run.encode(f"w{n - 1} w3").tolist() == [mask, 3]


def test_dream_gives_the_logits_of_a_bidirectional_qwen2_shifted(tmp_path):
    n, rows = 41, 48  # Dream's mask is its tokenizer's last token
    ref = random_reference(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, rows)
    assert ref.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    src = tmp_path / "dream"
    src.mkdir()
    save_file({k: v.detach().contiguous() for k, v in ref.state_dict().items()}, src / "model.safetensors")
    config = json.loads(ref.config.to_json_string()) | {"model_type": "Dream", "mask_token_id": n - 1, "architectures": ["DreamModel"]}
    (src / "config.json").write_text(json.dumps(config))
    word_tokenizer(words(n, n - 1), src)
    import_checkpoint("auto", src, tmp_path / "run")
    run = maskdiff.load(tmp_path / "run", precision="fp32")
    assert run.config.model.shift_logits and run.mask_id == n - 1
    ids = torch.randint(0, n, (2, 9))
    raw = bidirectional_logits(ref, ids)[..., : n - 1]
    expected = torch.cat((raw[:, :1], raw[:, :-1]), dim=1)  # Dream: the output at i - 1 predicts token i
    assert relative(run.logits(ids), expected) < 1e-5
    # block decoding on the KV cache reads the token before each window: with a full pass every
    # step it draws what the uncached sampler draws, and without one it still fills every position
    given = torch.full((2, 12), run.mask_id)
    given[:, :3] = ids[:, :3]
    draw = lambda **o: run.model.sample(2, 12, 8, given=given, generator=torch.Generator().manual_seed(0), block_size=3, **o)  # noqa: E731
    assert torch.equal(draw(kv_cache="dual", refresh=1), draw())
    assert (draw(kv_cache="dual")[:, 3:] < run.mask_id).all() and (draw(kv_cache="prefix")[:, 3:] < run.mask_id).all()


def test_a_tied_llama_folder_imports_as_the_autoregressive_model(tmp_path):
    n = 40
    ref = random_reference(transformers.LlamaConfig, transformers.LlamaForCausalLM, n, tied=True, bos_token_id=1)
    src = tmp_path / "llama"
    src.mkdir()
    state = {k: v.detach().contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    save_file(state, src / "model.safetensors")
    (src / "config.json").write_text(ref.config.to_json_string())
    word_tokenizer(words(n), src)
    import_checkpoint("hf", src, tmp_path / "run")
    run = maskdiff.load(tmp_path / "run", precision="fp32")
    assert run.config.model.causal and run.config.model.tie_embeddings and run.config.objective.name == "ar"
    ids = torch.randint(0, n, (2, 10))
    with torch.no_grad():
        expected = ref(ids).logits
    assert relative(run.logits(ids), expected) < 1e-5
    # the exact likelihood reads the BOS id first: -log p(x | BOS) as transformers computes it
    with torch.no_grad():
        full = ref(torch.cat([torch.ones(1, 1, dtype=torch.long), ids[:1]], dim=1)).logits[0, :-1].log_softmax(-1)
    nll = -full.gather(-1, ids[0, :, None]).sum().item()
    assert math.isclose(run.model.nelbo(ids[:1]).item(), nll, rel_tol=1e-5)


# ------------------------------------------------------------------ SMDM against its block written here
def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, base=10_000.0):
    """Rotary embedding of x [B, H, L, hd] as complex multiplication of (first half + i * second half)."""
    hd, L = x.shape[-1], x.shape[-2]
    freqs = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    turn = torch.polar(torch.ones(L, hd // 2, dtype=torch.float64), torch.arange(L, dtype=torch.float64)[:, None] * freqs)
    z = torch.complex(x[..., : hd // 2].double(), x[..., hd // 2 :].double()) * turn
    return torch.cat((z.real, z.imag), dim=-1).float()


def smdm_logits(state: dict, ids: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """SMDM's network read from its own state dict: fused per-group qkv, SwiGLU w3(silu(w1 x) * w2 x)."""
    x = state["transformer.wte.weight"][ids]
    B, L, d = x.shape
    hd = d // heads
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        h = rms(x, state[p + "norm_1.weight"])
        qkv = (h @ state[p + "attn.attn.weight"].T).view(B, L, heads, 3, hd)  # one query per group: q, k, v
        q, k, v = (qkv[:, :, :, j].transpose(1, 2) for j in range(3))
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(hd)
        if causal:
            scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, d)
        x = x + y @ state[p + "attn.proj.weight"].T
        h = rms(x, state[p + "norm_2.weight"])
        gated = torch.nn.functional.silu(h @ state[p + "mlp.swiglu.w1.weight"].T) * (h @ state[p + "mlp.swiglu.w2.weight"].T)
        x = x + gated @ state[p + "mlp.swiglu.w3.weight"].T
    return rms(x, state["transformer.ln_f.weight"]) @ state["lm_head.weight"].T


def smdm_state(vocab: int, padded: int, diffusion: bool, heads: int) -> dict:
    torch.manual_seed(1)
    shapes = {"transformer.wte.weight": (padded + diffusion, D), "transformer.ln_f.weight": (D,), "lm_head.weight": (padded, D)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        shapes |= {p + "norm_1.weight": (D,), p + "norm_2.weight": (D,), p + "attn.attn.weight": (3 * D, D), p + "attn.proj.weight": (D, D)}
        shapes |= {p + "mlp.swiglu.w1.weight": (HIDDEN, D), p + "mlp.swiglu.w2.weight": (HIDDEN, D), p + "mlp.swiglu.w3.weight": (D, HIDDEN)}
    return {
        name: torch.randn(shape) * 0.3 + (1.0 if name.endswith(("norm_1.weight", "norm_2.weight", "ln_f.weight")) else 0.0)
        for name, shape in shapes.items()
    }


@pytest.mark.parametrize("diffusion", [True, False])
def test_smdm_gives_the_logits_of_its_own_block(tmp_path, diffusion):
    n, padded, heads = 40, 64, 4  # the output layer is padded to a multiple of 64
    state = smdm_state(n, padded, diffusion, heads)
    file = tmp_path / ("mdm-tiny.safetensors" if diffusion else "ar-tiny.safetensors")
    save_file(state, file)
    tok = tmp_path / "tinyllama"
    tok.mkdir()
    word_tokenizer(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(3, n))], tok)
    with pytest.raises(MaskdiffError, match="head count"):
        import_checkpoint("smdm", file, tmp_path / "no-heads", tokenizer=str(tok))
    import_checkpoint("auto", file, tmp_path / "run", tokenizer=str(tok), overrides=[f"model.n_heads={heads}"])
    run = maskdiff.load(tmp_path / "run", precision="fp32")
    assert run.config.objective.name == ("md4" if diffusion else "ar") and run.mask_id == n
    ids = torch.randint(0, n + diffusion, (2, 12))  # maskdiff's mask id is n
    source_ids = ids.masked_fill(ids == n, padded)  # the checkpoint's mask row is its last (32000 in SMDM's)
    expected = smdm_logits(state, source_ids, heads, causal=not diffusion)[..., :n]
    assert relative(run.logits(ids), expected) < 1e-5


# ------------------------------------------------------------------ bad input: one line, nothing written
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    state = smdm_state(40, 64, True, 4)
    good = tmp_path / "mdm.safetensors"
    save_file(state, good)
    tok = tmp_path / "tok"
    tok.mkdir()
    word_tokenizer(["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(3, 40))], tok)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    wrong = dict(state, **{"transformer.h.1.mlp.swiglu.w3.weight": torch.zeros(D, HIDDEN + 1)})
    save_file(wrong, tmp_path / "wrong.safetensors")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    cases = {
        "not a GGUF file": ["gguf", str(text)],
        "not a complete safetensors file": ["smdm", str(truncated), "--tokenizer", str(tok)],
        "pass TinyLlama's with --tokenizer": ["smdm", str(good)],
        "tensor transformer.h.1.mlp.swiglu.w3.weight has shape": [
            "smdm",
            str(tmp_path / "wrong.safetensors"),
            "--tokenizer",
            str(tok),
            "--set",
            "model.n_heads=4",
        ],
        "holds no tokenizer.json": ["smdm", str(good), "--tokenizer", str(tmp_path), "--set", "model.n_heads=4"],
        "cannot tell the format": ["auto", str(tmp_path / "tok" / "tokenizer.json")],
    }
    for message, args in cases.items():
        assert main(["import", *args, "--out", str(tmp_path / "run")]) == 1, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


def test_an_unknown_gguf_quantisation_is_refused(tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_block_count(1)
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((4, 66), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ2_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert main(["import", "gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "IQ2_XXS" in err and "cannot dequantise" in err and not (tmp_path / "run").exists()
