"""Config loading: YAML + overrides, type checks, unknown keys listed, choices enforced."""

import pytest

from core.config import config_help, load_config
from core.errors import MatchLabError


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {res: 32}\ntrain: {epochs: 3}\nloss: {name: arcface, kwargs: {margin: 0.3}}\n")
    cfg = load_config(recipe, ["train.lr=1e-3", "train.nesterov=false", "loss.kwargs.scale=30", "model.width=1"])
    assert cfg.data.res == 32 and cfg.train.epochs == 3
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.nesterov is False
    assert cfg.loss.kwargs == {"margin": 0.3, "scale": 30}
    assert isinstance(cfg.model.width, float) and cfg.model.width == 1.0


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=3", "valid keys: train.epochs"),
        ("trian.epochs=3", "valid sections: data, model, loss, train"),
        ("train.epochs=three", "expected int"),
        ("train.epochs", "section.key=value"),
        ("data.split=random", "choose one of: identity, image"),
        ("train.threshold_rule=median", "eer, best_accuracy or far="),
        ("loss.pk_group=u(", "is not a regular expression"),
    ],
)
def test_bad_overrides_name_the_valid_choices(override, fragment):
    with pytest.raises(MatchLabError, match=fragment.replace(".", r"\.").replace("=", "=")):
        load_config(None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(MatchLabError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(MatchLabError, match="not valid YAML"):
        load_config(bad)


def test_help_lists_every_key_with_its_comment():
    text = config_help()
    assert "train.epochs=30" in text and "passes over the training set" in text
    assert "data.on_bad_image='skip'" in text
    # every key has its comment, also those whose default the formatter wrapped onto the next line
    for line in text.splitlines():
        if line.startswith("  "):
            key, _, rest = line.strip().partition("=")
            assert len(rest.split(None, 1)) == 2, f"{key} has no comment in --help"
