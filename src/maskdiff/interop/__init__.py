"""Pretrained models in and out of maskdiff: released checkpoints imported into ordinary run
folders, and any run exported as a Hugging Face-style folder.

``maskdiff import FORMAT SOURCE --out RUN`` (:func:`maskdiff.interop.importer.import_checkpoint`) reads one of

    smdm      SMDM's MDM and ARM safetensors files          maskdiff/interop/smdm.py
    llada     LLaDA-8B-Base/Instruct folders                maskdiff/interop/llada.py
    dream     Dream-v0-7B-Base/Instruct folders             maskdiff/interop/hf.py
    hf        Llama/Qwen2/Mistral/SmolLM2 causal LM folders maskdiff/interop/hf.py
    gguf      GGUF files of Llama/Qwen2 causal LMs           maskdiff/interop/gguf_file.py
    maskdiff  folders written by `maskdiff export hf`       maskdiff/interop/export.py
    auto      any of these, told apart by maskdiff/interop/detect.py

and writes a run folder (maskdiff/interop/writer.py) that every command opens with
``--checkpoint RUN``. The run holds a converted copy of the weights in the source's precision
(bf16 stays bf16; GGUF's quantised tensors become float32): q/k/v and gate/up are fused, rows
reordered, and a GGUF file dequantised, so the source cannot be referenced in place; once the
import has finished the source may be deleted. Each tensor is read (memory-mapped), converted,
written and dropped in turn: the import holds one tensor at a time, never the model.
"""

# the names `maskdiff import` takes, here so that its --help needs no torch (importer.READERS reads them)
FORMATS = ("smdm", "llada", "dream", "hf", "gguf", "auto")
