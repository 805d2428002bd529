"""--show: classify one image (file or URL), print its top-k, and save the tutorials' figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.images import BadImage, decode_image
from core.preprocess import EvalSpec, eval_transform
from core.report import plot_topk
from serve.backends import Backend
from serve.discover import Item
from serve.sources import SourceError, read_bytes
from serve.writer import Layout, error_row, ok_row


def show_one(
    item: Item, backend: Backend, spec: EvalSpec, layout: Layout, figure: Path, timeout: float
) -> dict[str, Any]:
    """The row for `item`; prints the top-k and writes the figure when it decodes. An error row is
    returned unprinted: the caller says it once, as a user error."""
    try:
        if item.error:
            raise BadImage(item.error)
        image = decode_image(read_bytes(item, timeout))
    except (SourceError, BadImage) as exc:
        return error_row(layout, item.path, str(exc))
    probs = torch.softmax(backend(eval_transform(spec)(image)[None]), dim=1)[0].numpy()
    row = ok_row(layout, item.path, probs)
    print(f"{item.path}")
    top = probs.argsort()[::-1][: layout.topk]
    width = max(len(layout.display_names[i]) for i in top)  # aligned columns also for long display names
    for rank, i in enumerate(top, start=1):
        print(f"  {rank}. {layout.display_names[i]:<{width}}  {probs[i]:.4f}  (label {layout.classes[i]})")
    try:
        plot_topk(
            image, probs, list(layout.display_names), layout.topk, figure, title=os.path.basename(item.path)
        )
    except OSError as exc:
        raise UserError(f"cannot write {figure} ({exc.strerror or exc}); choose another --figure") from None
    print(f"figure: {figure}")
    return row
