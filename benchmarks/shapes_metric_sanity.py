"""The shapes metric on the data set's own images and on blurred copies: a sanity table (how sharp must a
sample be to count as a shape?) and optionally a picture of the versions. Used for docs/eval.md.

    python benchmarks/shapes_metric_sanity.py --png docs/img/eval-shapes-blur.png
"""

from __future__ import annotations

import numpy as np

from jitkit.eval.shapes_metric import blur, shapes_metrics


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/shapes_metric_sanity.py [--size 16] [--png OUT]``: the metric on the data set's own images
    and on blurred copies (a sanity table), optionally with a picture of the three versions."""
    import argparse

    from jitkit.data.shapes import class_names, render_shapes

    p = argparse.ArgumentParser(prog="python benchmarks/shapes_metric_sanity.py")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--png", default=None)
    a = p.parse_args(argv)
    images, labels = render_shapes(per_class=a.per_class, size=a.size, seed=1)
    versions = [("sharp", images), ("box 3x3", blur(images, 3)), ("box 3x3 twice", blur(images, 3, 2))]
    versions.append(("box 5x5", blur(images, 5)))
    print("| images | accuracy | colour | shape | mean IoU |\n|---|---|---|---|---|")
    for name, im in versions:
        m = shapes_metrics(im, labels)
        print(
            f"| {name} | {m['accuracy']:.3f} | {m['color_accuracy']:.3f} | {m['shape_accuracy']:.3f} "
            f"| {m['mean_iou']:.3f} |"
        )
    if a.png:
        from jitkit.images import save_grid

        pick = np.concatenate([np.nonzero(labels == c)[0][:1] for c in range(0, 16, 2)])  # 8 classes
        rows = np.concatenate([im[pick] for _, im in versions])
        rlab = np.repeat(np.arange(len(versions)), len(pick))
        save_grid(rows, rlab, a.png, [n for n, _ in versions])
        print(f"wrote {a.png} ({', '.join(class_names()[c] for c in range(0, 16, 2))})")


if __name__ == "__main__":
    main()
