"""Broken plugins: imports that raise or exit, hooks that raise, datasets and models that lie.

Each plugin is a real distribution (a ``*.dist-info`` with a ``dlmi`` entry point) in the case's folder,
put on ``sys.path`` for the case only; the CLI loads it as a new process would.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator

from hostile.harness import SEGMENTER, Case, Workspace
from hostile.outcome import HANDLED, REFUSED, RunRecord

# A tiny dataset plugin: 12 generated 32 px images (4 per class) whose ``samples``/``load`` a case replaces.
DATASET = """
    import numpy as np
    from dlmi import hookimpl
    from dlmi.datasets.base import Sample

    class Tiny:
        name = "tiny"
        classes = ("normal", "benign", "malignant")
        normal_class = "normal"
        has_masks = True
        needs_data_dir = False

        def samples(self, data_dir):
            return [Sample(f"{self.classes[i % 3]}/{i}.png", i % 3) for i in range(12)]

        def load(self, sample):
            rng = np.random.default_rng(int(sample.key.split("/")[1][:-4]))
            mask = np.zeros((32, 32), bool)
            if sample.label:
                mask[8:20, 8:20] = True
            return (rng.integers(0, 200, (32, 32)) + 50 * mask).astype(np.uint8), mask
    {extra}

    @hookimpl
    def dlmi_register_datasets(register):
        register("tiny", {factory})
"""

# A classification model plugin: ``seed-cnn`` at 64 px whose output a case replaces.
MODEL = """
    import torch
    from torch import nn
    from dlmi import hookimpl

    class Odd(nn.Module):
        def __init__(self, num_classes=3, image_size=64, **options):
            super().__init__()
            self.linear = nn.Linear(1, 7)

        def forward(self, x):
            {forward}

    @hookimpl
    def dlmi_register_models(register):
        register("odd", Odd, task="classification")
"""


def install(site, dist: str, module: str, source: str) -> None:
    """A distribution ``dist`` whose ``dlmi`` entry point is ``module`` (its code: ``source``)."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[dlmi]\n{module} = {module}\n")


@contextlib.contextmanager
def plugin_site(ws: Workspace) -> Iterator[None]:
    """ws/site on sys.path for the case; its modules and the loaded plugins are forgotten afterwards."""
    from dlmi.plugins import reset_plugins

    site = ws.path("site")
    site.mkdir()
    saved_path, saved_env = list(sys.path), os.environ.pop("DLMI_DISABLE_PLUGINS", None)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    before = set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(site)):
                del sys.modules[name]
        if saved_env is not None:
            os.environ["DLMI_DISABLE_PLUGINS"] = saved_env
        importlib.invalidate_caches()
        reset_plugins()


def plugin(
    label: str,
    source: str,
    args: Callable[[Workspace], list[str]],
    expect: str,
    *,
    names: tuple[str, ...] = (),
    check: Callable[[RunRecord], None] | None = None,
    dist: str = "dlmi-hostile",
) -> Case:
    """Install a plugin ``dist`` of ``source`` and run ``dlmi ARGS``."""

    def run(ws: Workspace) -> list[str]:
        install(ws.path("site"), dist, dist.replace("-", "_"), source)
        return args(ws)

    return Case("plugins", label, expect, run, names=names, check=check, context=plugin_site)


def _listing(*words: str, present: tuple[str, ...] = ()) -> Callable[[RunRecord], None]:
    """``dlmi plugins --json`` worked, warns naming ``words`` and lists ``present`` names."""

    def check(record: RunRecord) -> None:
        for word in words:
            assert word in record.stderr, f"stderr does not name {word}: {record.stderr[-300:]}"
        names = {row["name"] for row in json.loads(record.stdout)["plugins"]}
        assert set(present) <= names, f"missing {set(present) - names}"

    return check


def _builtin_help(record: RunRecord) -> None:
    assert "Predict a lesion mask" in " ".join(record.stdout.split()), record.stdout[:300]


def _train(
    dataset: str = "tiny", command: str = "segmenter", *extra: str
) -> Callable[[Workspace], list[str]]:
    def run(ws: Workspace) -> list[str]:
        options = (
            SEGMENTER
            if command != "classifier"
            else ["--image-size", "64", "--epochs", "1", "--device", "cpu", "--cache", "none", "-q"]
        )
        return ["train", command, "--dataset", dataset, *options, *extra, "--out", str(ws.path("run"))]

    return run


PLUGINS = ["plugins", "--json"]


def _dataset(extra: str = "", factory: str = "Tiny") -> str:
    return DATASET.replace("{extra}", textwrap.indent(textwrap.dedent(extra), "    ")).replace(
        "{factory}", factory
    )


CASES = [
    plugin(
        "a plugin whose import raises",
        "raise ImportError('needs libfoo')",
        lambda ws: PLUGINS,
        HANDLED,
        check=_listing("dlmi-hostile", present=("unet",)),
    ),
    plugin(
        "a plugin with a syntax error",
        "def broken(:\n",
        lambda ws: PLUGINS,
        HANDLED,
        check=_listing("dlmi-hostile", present=("unet",)),
    ),
    plugin(
        "a plugin whose import calls sys.exit(7)",
        "import sys\nsys.exit(7)",
        lambda ws: PLUGINS,
        HANDLED,
        check=_listing("dlmi-hostile", present=("unet",)),
    ),
    plugin(
        "a plugin whose import calls sys.exit(7), then --help",
        "import sys\nsys.exit(7)",
        lambda ws: ["--help"],
        HANDLED,
        check=lambda r: None if "predict" in r.stdout else _no("help"),
    ),
    plugin(
        "a hook that raises",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_models(register):
            raise RuntimeError("boom in the hook")
    """,
        lambda ws: PLUGINS,
        HANDLED,
        check=_listing("dlmi-hostile", present=("unet",)),
    ),
    plugin(
        "a plugin command named predict",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_commands(app):
            @app.command("predict")
            def predict():
                "Not the built-in."
                print("hijacked")
    """,
        lambda ws: ["predict", "--help"],
        HANDLED,
        check=_builtin_help,
    ),
    plugin(
        "a plugin registering the built-in name unet",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_models(register):
            register("unet", lambda **kw: None, task="segmentation")
    """,
        lambda ws: PLUGINS,
        REFUSED,
        names=("unet", "built-in"),
    ),
    plugin(
        "a plugin registering one name twice",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_losses(register):
            register("twice", lambda: 1, task="segmentation")
            register("twice", lambda: 2, task="segmentation")
    """,
        lambda ws: PLUGINS,
        REFUSED,
        names=("twice",),
    ),
    plugin(
        "a plugin registering a non-callable loss, used",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_losses(register):
            register("not-callable", 42, task="segmentation")
    """,
        lambda ws: [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--loss",
            "not-callable",
            *SEGMENTER,
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("not-callable",),
    ),
    plugin(
        "a dataset plugin that trains",
        _dataset(),
        _train(),
        HANDLED,
        check=lambda r: None if (r.workspace / "run" / "best.pt").is_file() else _no("best.pt"),
    ),
    plugin(
        "a dataset whose samples() returns nothing",
        _dataset(
            """
        class Empty(Tiny):
            def samples(self, data_dir):
                return []
    """,
            "Empty",
        ),
        _train(),
        REFUSED,
        names=("tiny",),
    ),
    plugin(
        "a dataset whose load() raises",
        _dataset(
            """
        class Raising(Tiny):
            def load(self, sample):
                raise OSError("the PACS is down")
    """,
            "Raising",
        ),
        _train(),
        REFUSED,
        names=("tiny", "PACS is down"),
    ),
    plugin(
        "a dataset whose load() returns a float image",
        _dataset(
            """
        class Floats(Tiny):
            def load(self, sample):
                image, mask = super().load(sample)
                return image / 255.0, mask
    """,
            "Floats",
        ),
        _train(),
        REFUSED,
        names=("tiny",),
    ),
    plugin(
        "a dataset whose mask has another size",
        _dataset(
            """
        class Sizes(Tiny):
            def load(self, sample):
                image, mask = super().load(sample)
                return image, mask[:16]
    """,
            "Sizes",
        ),
        _train(),
        REFUSED,
        names=("tiny",),
    ),
    plugin(
        "a dataset with no classes",
        _dataset(
            """
        class NoClasses(Tiny):
            classes = ()
    """,
            "NoClasses",
        ),
        _train(),
        REFUSED,
        names=("tiny",),
    ),
    plugin(
        "a dataset whose factory raises",
        _dataset(
            """
        def failing():
            raise RuntimeError("no licence")
    """,
            "failing",
        ),
        _train(),
        REFUSED,
        names=("tiny", "no licence"),
    ),
    plugin(
        "a dataset whose mask is 0/255 uint8",
        _dataset(
            """
        class Bytes(Tiny):
            def load(self, sample):
                image, mask = super().load(sample)
                return image, mask.astype(np.uint8) * 255
    """,
            "Bytes",
        ),
        _train(),
        REFUSED,
        names=("tiny", "bool"),
    ),
    plugin(
        "a dataset whose load() returns only the image",
        _dataset(
            """
        class ImageOnly(Tiny):
            def load(self, sample):
                return super().load(sample)[0]
    """,
            "ImageOnly",
        ),
        _train(),
        REFUSED,
        names=("tiny", "pair"),
    ),
    plugin(
        "a dataset whose classes is a string",
        _dataset(
            """
        class Letters(Tiny):
            classes = "nbm"
    """,
            "Letters",
        ),
        _train(),
        REFUSED,
        names=("tiny", "classes"),
    ),
    plugin(
        "a dataset whose samples() raises",
        _dataset(
            """
        class Offline(Tiny):
            def samples(self, data_dir):
                raise ConnectionError("the PACS is down")
    """,
            "Offline",
        ),
        _train(),
        REFUSED,
        names=("tiny", "PACS is down"),
    ),
    plugin(
        "a dataset with a label beyond its classes",
        _dataset(
            """
        class Beyond(Tiny):
            def samples(self, data_dir):
                found = super().samples(data_dir)
                return [*found[:4], Sample(found[4].key, 5), *found[5:]]
    """,
            "Beyond",
        ),
        _train(),
        REFUSED,
        names=("tiny", "label"),
    ),
    plugin(
        "a dataset with one key twice",
        _dataset(
            """
        class Twice(Tiny):
            def samples(self, data_dir):
                found = super().samples(data_dir)
                return [*found, found[0]]
    """,
            "Twice",
        ),
        _train(),
        REFUSED,
        names=("tiny", "normal/0.png"),
    ),
    plugin(
        "a plugin registering a dataset under a number",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_datasets(register):
            register(42, lambda: None)
    """,
        lambda ws: PLUGINS,
        REFUSED,
        names=("dlmi-hostile", "42"),
    ),
    plugin(
        "a segmentation model whose mask is half the size",
        """
        import torch
        from dlmi import hookimpl

        class Half(torch.nn.Module):
            def __init__(self, in_channels=1, out_channels=1, **options):
                super().__init__()
                self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)

            def forward(self, x):
                return self.conv(x)

        @hookimpl
        def dlmi_register_models(register):
            register("half", Half, task="segmentation")
    """,
        lambda ws: [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--model",
            "half",
            *SEGMENTER,
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("half",),
    ),
    plugin(
        "a loss that ignores the logits",
        """
        import torch
        from dlmi import hookimpl

        class Constant(torch.nn.Module):
            def forward(self, logits, target):
                return torch.tensor(1.0)

        @hookimpl
        def dlmi_register_losses(register):
            register("constant", Constant, task="segmentation")
    """,
        lambda ws: [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--loss",
            "constant",
            *SEGMENTER,
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("constant",),
    ),
    plugin(
        "a model with 7 logits for 3 classes",
        MODEL.replace("{forward}", "return self.linear(x.mean(dim=(1, 2, 3))[:, None])"),
        lambda ws: [
            "train",
            "classifier",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--model",
            "odd",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "-q",
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("odd", "7"),
    ),
    plugin(
        "a model returning a string",
        MODEL.replace("{forward}", "return 'logits'"),
        lambda ws: [
            "train",
            "classifier",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--model",
            "odd",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "-q",
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("odd",),
    ),
    plugin(
        "a model factory that rejects the options",
        """
        from dlmi import hookimpl

        @hookimpl
        def dlmi_register_models(register):
            register("picky", lambda: None, task="segmentation")
    """,
        lambda ws: [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--model",
            "picky",
            *SEGMENTER,
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("picky",),
    ),
    plugin(
        "a loss returning NaN",
        """
        import torch
        from dlmi import hookimpl

        class NanLoss(torch.nn.Module):
            def forward(self, logits, target):
                return (logits * float("nan")).mean()

        @hookimpl
        def dlmi_register_losses(register):
            register("nan-loss", NanLoss, task="segmentation")
    """,
        lambda ws: [
            "train",
            "segmenter",
            "--dataset",
            "busi",
            "--data-dir",
            str(ws.world.data),
            "--loss",
            "nan-loss",
            *SEGMENTER,
            "--out",
            str(ws.path("run")),
        ],
        REFUSED,
        names=("nan",),
    ),
]


def _no(what: str) -> None:
    raise AssertionError(f"no {what}")
