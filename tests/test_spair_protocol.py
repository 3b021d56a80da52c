"""DIFT's SPair protocol options: PIL's bicubic resize and the per-category prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval import spair_root  # noqa: F401 (fixture: a tiny SPair-71k folder)
from test_loading import make_text_encoder_folder, write_diffusers_folder

from cleandift_rt import FeatureExtractor, cli
from cleandift_rt.cli.common import RESIZE_FILTER
from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.evaluation import ExtractorPredictor
from cleandift_rt.evaluation.spair import DIFT_PROMPT, evaluate_spair
from cleandift_rt.imaging import RESIZE_FILTERS, prepare_image
from cleandift_rt.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread


@pytest.mark.parametrize(
    "size,policy", [((64, 128), "square"), ((192, 256), "square"), (96, "fit")]
)
def test_bicubic_pil_is_pils_own_resize(size, policy):
    image = np.random.default_rng(0).integers(0, 256, (75, 131, 3), dtype=np.uint8)
    prepared = prepare_image(image, size, policy, multiple=32, resize_filter="bicubic-pil")
    (rw, rh) = (round(131 * prepared.transform.scale[0]), round(75 * prepared.transform.scale[1]))
    expected = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(prepared.array[:rh, :rw], expected)
    area = prepare_image(image, size, policy, multiple=32)  # the default differs
    assert not np.array_equal(area.array, prepared.array)
    assert area.transform.to_dict() == prepared.transform.to_dict()  # same coordinates


def test_resize_filter_names():
    assert tuple(RESIZE_FILTER.choices) == RESIZE_FILTERS
    with pytest.raises(CleanDIFTError, match="resize filter"):
        prepare_image(np.zeros((8, 8, 3), np.uint8), 64, resize_filter="lanczos")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """tiny's U-Net and VAE with a tiny random CLIP text encoder (width 32) in one folder."""
    folder = write_diffusers_folder(tmp_path_factory.mktemp("sd-text"), load_model("tiny"),
                                    embedding=False)  # fmt: skip
    _, encoder = make_text_encoder_folder(folder)
    return folder


def test_set_prompt_conditions_the_network(text_model):
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    fx = FeatureExtractor.from_pretrained(str(text_model), ("us3",), device="cpu", resolution=64)
    empty = fx(image).maps["us3"]
    fx.set_prompt("a photo of a dog")
    dog = fx(image).maps["us3"]
    expected = FeatureExtractor.from_pretrained(
        str(text_model), ("us3",), device="cpu", resolution=64, prompt="a photo of a dog"
    )(image).maps["us3"]
    torch.testing.assert_close(dog, expected, rtol=0, atol=0)
    assert not torch.allclose(dog, empty)
    with pytest.raises(CleanDIFTError, match="text encoder"):
        FeatureExtractor.from_pretrained("tiny", ("us3",), device="cpu").set_prompt("a cat")


class Recorder:
    """A predictor that records what it predicted (per pair, in order)."""

    def __init__(self, inner):
        self.inner, self.predicted = inner, []

    def __call__(self, *args, **kwargs):
        self.predicted.append(self.inner(*args, **kwargs))
        return self.predicted[-1]


def test_each_category_gets_its_own_prompt(text_model, spair_root):  # noqa: F811
    def extractor(prompt=""):
        return FeatureExtractor.from_pretrained(
            str(text_model), ("us3",), device="cpu", resolution=64, prompt=prompt
        )

    templated = Recorder(ExtractorPredictor(extractor()))
    summary = evaluate_spair(spair_root, templated, prompt_template=DIFT_PROMPT)
    assert summary["prompt_template"] == DIFT_PROMPT
    # the same pairs, one category at a time with that category's prompt fixed
    fixed = []
    for category in ("cat", "dog"):  # read_pairs order: by file name (cat pairs first)
        recorder = Recorder(ExtractorPredictor(extractor(f"a photo of a {category}")))
        evaluate_spair(spair_root, recorder, categories=[category])
        fixed += recorder.predicted
    assert len(fixed) == len(templated.predicted) == 3
    for a, b in zip(templated.predicted, fixed):
        np.testing.assert_array_equal(a, b)


def test_cli_dift_defaults_to_difts_prompt_and_resize(text_model, spair_root, tmp_path, capsys):  # noqa: F811
    def run(*extra):
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            cli.main(["eval", "spair", "--root", str(spair_root), "--resolution", "64",
                      "--device", "cpu", "--tap", "us3", "--json", *map(str, extra)])  # fmt: skip
        out, err = capsys.readouterr()
        return info.value.code, out, err

    code, out, err = run("--model", text_model, "--dift", "--dift-ensemble", 1)
    assert code in (0, None), err
    summary = json.loads(out)
    assert summary["prompt_template"] == DIFT_PROMPT and summary["resize_filter"] == "bicubic-pil"
    code, out, err = run("--model", "tiny", "--resize-filter", "bicubic-pil")
    assert code in (0, None), err
    summary = json.loads(out)
    assert summary["prompt_template"] is None and summary["resize_filter"] == "bicubic-pil"
    for extra, needle in [
        (("--model", "tiny", "--prompt-template", DIFT_PROMPT), "text encoder"),
        (("--model", "tiny", "--prompt-template", "a {kind}"), "template"),
    ]:
        code, out, err = run(*extra)
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
