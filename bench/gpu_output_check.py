"""Why can the graphmfu backend's bf16 logits differ from plain torch.compile in the last bit?
graphmfu compiles with Inductor's caches off (so warm caches never hide a graph); plain compiles
share the on-disk autotuning cache.  This compares, on the demo model: plain vs plain, plain with
caches off vs plain, and graphmfu vs plain.  Run on a GPU (device tool)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

import graphmfu  # noqa: E402
from examples.minimal_llama import Llama, LlamaConfig  # noqa: E402
from graphmfu._inductor import caches_off  # noqa: E402


def main():
    torch.manual_seed(0)
    cfg = LlamaConfig(dim=4096, layers=2, heads=32, kv_heads=8, ffn=11008, vocab=32000, max_seq=512)
    model = Llama(cfg).to(device="cuda", dtype=torch.bfloat16)
    tokens = torch.randint(0, cfg.vocab, (1, 512), device="cuda")

    def run(backend=None, no_cache=False):
        torch._dynamo.reset()
        with torch.no_grad():
            cm = torch.compile(model, backend=backend or "inductor")
            if no_cache:
                with caches_off():
                    return cm(tokens).float()
            return cm(tokens).float()

    outs = {"plain": run(), "plain again": run(), "plain, caches off": run(no_cache=True),
            "plain, caches off again": run(no_cache=True), "graphmfu": run(graphmfu.backend)}
    ref = outs["plain"]
    for k, v in outs.items():
        print(f"{k:24s} vs plain: {int((v != ref).sum()):9d} of {v.numel()} logits differ, "
              f"max |diff| {(v - ref).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
