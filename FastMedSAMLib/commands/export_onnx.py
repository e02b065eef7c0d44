"""`fastmedsam export-onnx MODEL [--int8] [--weights PATH]`: build (or verify) the cached ONNX exports of the
encoder and of the prepared decoder's single-mask core."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export-onnx",
        help="export a 2D model's image encoder and decoder to ONNX into the user cache (what runtime=onnxruntime runs)",
        description=(
            "Export the image encoder of a 2D box model and its prepared decoder's single-mask core to ONNX "
            "(opset 17) into the user cache, keyed by the weights' sha256 and the torch/onnx/onnxruntime versions, "
            "each with a sha256 sidecar. An existing export that still matches its sidecar is kept; a stale or "
            "tampered one is rebuilt. Prints the files' paths."
        ),
    )
    p.add_argument("model", help="registry model name (litemedsam, medficientsam-l0, ...)")
    p.add_argument("--int8", action="store_true", help="also build the dynamic int8 quantisation")
    p.add_argument("--weights", type=Path, help="a checkpoint file instead of the registry's verified weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import RuntimeChoiceError
    from ..models import ADAPTERS, load_model, slice_adapter
    from ..runtime import weights_sha256
    from ..runtime.decoder import DecoderCore
    from ..runtime.onnx_cache import decoder_onnx, encoder_onnx

    if args.model not in ADAPTERS:
        raise RuntimeChoiceError(f"ONNX export covers the 2D box models ({', '.join(sorted(ADAPTERS))}), not {args.model!r}")
    net = load_model(args.model, "cpu", args.weights)
    sha = weights_sha256(args.model, args.weights)
    size = slice_adapter(args.model).size
    print(encoder_onnx(net.image_encoder, args.model, sha, size))
    print(decoder_onnx(DecoderCore(net), args.model, sha))
    if args.int8:
        print(encoder_onnx(net.image_encoder, args.model, sha, size, int8=True))
    return 0
