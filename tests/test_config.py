"""Typed configuration: layers, overrides, and refusals that name the valid choices (no Spark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loganomaly.config import Config, load_config, parse_override, valid_keys
from loganomaly.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_layers_apply_in_order(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "default.yaml").write_text("train:\n  epochs: 7\n  batch_size: 16\n")
    (tmp_path / "profiles" / "p.yaml").write_text("train:\n  epochs: 9\n")
    cfg = load_config(profile="p", overrides=["train.batch_size=8", "lake.engine=deltars"], conf_dir=tmp_path)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.lake.engine) == (9, 8, "deltars")


def test_project_conf_and_profiles_load() -> None:
    for profile in (None, "synthetic", "test"):
        cfg = load_config(profile=profile, conf_dir=CONF)
        assert isinstance(cfg, Config)
    # every shipped profile names registered kinds, backends and readers
    for path in sorted((CONF / "profiles").glob("*.yaml")):
        assert isinstance(load_config(profile=path.stem, conf_dir=CONF), Config), path.name
    assert load_config(profile="synthetic", conf_dir=CONF).train.train_until.startswith("2024-03-05")


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["train.epochz=3"], conf_dir=CONF)
    assert "train.epochz" in str(err.value)
    assert "train.epochs" in str(err.value) and "lake.root" in str(err.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text("lake:\n  rooot: x\n")
    with pytest.raises(
        ConfigError, match=r"default.yaml: unknown config key 'lake.rooot'; valid keys: .*lake.root"
    ):
        load_config(conf_dir=tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=many", "expects an integer"),
        ("train.epochs=true", "expects an integer"),
        ("train.bf16=yes please", "expects true or false"),
        ("lake.engine=hive", "choose one of: auto, delta, deltars"),
        ("train.backend=mpi", "unknown train.backend 'mpi'.*choose one of: local, torch_distributor, horovod"),
        ("model.kind=lstm", "unknown model.kind 'lstm'.*choose one of: autoencoder, classifier, deeplog"),
        ("train.init=he", "choose one of: auto, default, xavier"),
        ("train.learning_rate=[1]", "expects a number"),
        ("train.threshold_quantile=1.5", "threshold_quantile must be in"),
        ("train.std_floor=0", "train.std_floor must be a number > 0"),
        ("train.std_floor=-0.1", "train.std_floor must be a number > 0"),
        ("train.std_floor=.nan", "train.std_floor must be a number > 0"),
        ("train.std_floor=small", "expects a number"),
        ("features.baseline_statistic=mode", "choose one of: mean, median"),
        ("features.metric_levels=false", "metric_levels: false needs features.entity_features: true"),
        ("features.metric_levels=maybe", "expects true or false"),
        ("model.members=0", "model.members must be >= 1"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override], conf_dir=CONF)


def test_members_are_the_autoencoders_alone() -> None:
    assert load_config(overrides=["model.members=3"], conf_dir=CONF).model.members == 3
    with pytest.raises(ConfigError, match="model.members averages autoencoders; model.kind=classifier"):
        load_config(overrides=["model.kind=classifier", "model.members=2"], conf_dir=CONF)


def test_override_values_are_typed() -> None:
    cfg = load_config(
        overrides=["train.learning_rate=1e-4", "train.epochs=3", "spark.conf={a.b: c}"], conf_dir=CONF
    )
    assert cfg.train.learning_rate == pytest.approx(1e-4) and cfg.train.epochs == 3
    assert cfg.spark.conf == {"a.b": "c"}
    assert parse_override("lake.root=/tmp/x=y") == ("lake.root", "/tmp/x=y")


def test_missing_profile_and_conf_dir_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'nope'; available: .*synthetic"):
        load_config(profile="nope", conf_dir=CONF)
    with pytest.raises(ConfigError, match="has no default.yaml"):
        load_config(conf_dir=tmp_path / "absent")


def test_valid_keys_cover_every_section() -> None:
    sections = {k.split(".")[0] for k in valid_keys()}
    assert sections == {"spark", "lake", "generate", "ingest", "templates", "features", "model", "train", "score"}


def test_sources_and_templates_sections(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "default.yaml").write_text("lake: {root: x}\n")
    (conf / "profiles" / "apps.yaml").write_text(
        "ingest:\n"
        "  sources:\n"
        "    - name: hdfs\n"
        "      paths: ['*/hdfs/*.log']\n"
        "      options: {format: loghub, pattern: HDFS, year: 2008}\n"
        "templates:\n"
        "  preset: HDFS\n"
        "  options: {sim_th: 0.5}\n"
    )
    cfg = load_config(profile="apps", conf_dir=conf)
    (src,) = cfg.ingest.sources
    assert src.name == "hdfs" and src.paths == ["*/hdfs/*.log"]
    assert src.options == {"format": "loghub", "pattern": "HDFS", "year": 2008}
    assert cfg.templates.preset == "HDFS" and cfg.templates.options == {"sim_th": 0.5}
    (conf / "profiles" / "bad.yaml").write_text("ingest:\n  sources:\n    - {name: a, paths: [x], fromat: json}\n")
    with pytest.raises(ConfigError, match="unknown keys \\['fromat'\\]; valid keys: name, paths, options"):
        load_config(profile="bad", conf_dir=conf)
    (conf / "profiles" / "noname.yaml").write_text("ingest:\n  sources:\n    - {paths: [x]}\n")
    with pytest.raises(ConfigError, match="needs a name"):
        load_config(profile="noname", conf_dir=conf)


def test_train_reader_is_arrow_by_default_and_a_checked_choice() -> None:
    assert load_config(conf_dir=CONF).train.reader == "arrow"
    assert load_config(overrides=["train.reader=petastorm"], conf_dir=CONF).train.reader == "petastorm"
    with pytest.raises(ConfigError, match="unknown train.reader 'parquet' .*; choose one of: arrow, petastorm"):
        load_config(overrides=["train.reader=parquet"], conf_dir=CONF)


@pytest.mark.parametrize("value", ["nan", ".nan", "-1", "0", "inf"])
def test_learning_rate_must_be_a_finite_positive_number(value: str) -> None:
    with pytest.raises(ConfigError, match="train.learning_rate must be a positive number"):
        load_config(overrides=[f"train.learning_rate={value}"], conf_dir=CONF)


def test_init_is_auto_by_default_so_each_kind_keeps_its_own() -> None:
    assert Config().train.init == "auto"
    assert load_config(conf_dir=CONF).train.init == "auto"
    assert load_config(overrides=["train.init=default"], conf_dir=CONF).train.init == "default"


def test_classifier_with_normal_only_is_refused_by_the_kind_not_the_config(tmp_path: Path) -> None:
    """The config holds no per-kind rules; the classifier refuses to train on one class itself."""
    from loganomaly.registry import MODEL_KINDS

    cfg = load_config(overrides=["model.kind=classifier", "train.normal_only=true"], conf_dir=CONF)
    # Refused before the kind reads any input: no Spark session and no lake are needed to see it.
    with pytest.raises(ConfigError, match="classifier learns from both classes; set train.normal_only=false"):
        MODEL_KINDS.get("classifier").plan(None, cfg, None, tmp_path / "model")


def test_seed_article_recipe_as_settings_matches_the_profile() -> None:
    """The README's --set recipe and the ``seed_article`` profile describe the same training."""
    # README, "The seed article's recipe is --set ...", as written there (momentum: the default 0.9)
    recipe = ["train.optimizer=sgd_nesterov", "train.learning_rate=0.005", "train.clip_value=0.5",
              "train.init=xavier", "train.seed=123"]
    train = load_config(profile=None, overrides=recipe, conf_dir=CONF).train
    profile = load_config(profile="seed_article", conf_dir=CONF).train
    for name in ("optimizer", "momentum", "learning_rate", "clip_value", "init", "seed"):
        assert getattr(train, name) == getattr(profile, name), name
    # The profile sets the recipe only: everything else is the defaults'.
    plain = load_config(profile=None, conf_dir=CONF).train
    differs = {f for f in plain.__dataclass_fields__ if getattr(plain, f) != getattr(profile, f)}
    assert differs <= {"optimizer", "momentum", "learning_rate", "clip_value", "init", "seed"}, differs
    with pytest.raises(ConfigError, match="momentum"):
        load_config(profile=None, overrides=["train.optimizer=sgd_nesterov", "train.momentum=0"])
    with pytest.raises(ConfigError, match="clip_value"):
        load_config(profile=None, overrides=["train.clip_value=0"])
    for bad in ("0", "1", "1.5", "nan"):
        with pytest.raises(ConfigError, match="ema_decay"):
            load_config(profile=None, overrides=[f"train.ema_decay={bad}"])
    assert load_config(profile=None, overrides=["train.ema_decay=0.999"]).train.ema_decay == 0.999
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(profile=None, overrides=["train.optimizer=rmsprop"])


def test_train_command_flags_become_settings(tmp_path: Path) -> None:
    from loganomaly.cli import _config, build_parser

    args = build_parser().parse_args(["train", "--conf-dir", str(CONF), "--lake", str(tmp_path), "--model-dir", "m",
                                      "--backend", "horovod", "--resume", "--init-from", str(tmp_path / "old")])
    train = _config(args).train
    assert (train.backend, train.resume, train.init_from) == ("horovod", True, str(tmp_path / "old"))
    plain = _config(build_parser().parse_args(["train", "--conf-dir", str(CONF), "--model-dir", "m"])).train
    assert (plain.resume, plain.init_from) == (False, "")
    args = build_parser().parse_args(["featurize", "--conf-dir", str(CONF), "--since", "yesterday"])
    assert args.since == "yesterday"


def test_the_default_std_floor_is_the_normalisers_and_only_nslkdd_raises_it() -> None:
    from loganomaly.models.normaliser import STD_FLOOR

    assert load_config(conf_dir=CONF).train.std_floor == STD_FLOOR
    assert load_config(profile="zeek", conf_dir=CONF).train.std_floor == STD_FLOOR
    assert load_config(profile="nslkdd", conf_dir=CONF).train.std_floor > STD_FLOOR


def test_network_indicators_are_on_in_the_zeek_profile_only() -> None:
    zeek = load_config(profile="zeek", conf_dir=CONF)
    assert zeek.features.network_indicators and zeek.model.network_indicators
    plain = load_config(conf_dir=CONF)
    assert not plain.features.network_indicators and not plain.model.network_indicators


def test_template_counts_are_off_only_in_the_zeek_profile_and_refused_with_the_unseen_share() -> None:
    assert load_config(conf_dir=CONF).features.template_counts is True
    assert load_config(profile="bgl", conf_dir=CONF).features.template_counts is True
    assert load_config(profile="zeek", conf_dir=CONF).features.template_counts is False
    with pytest.raises(ConfigError, match="template_counts"):
        load_config(conf_dir=CONF, overrides=["features.template_counts=false", "model.unseen_share=true"])


def test_metric_baseline_settings_are_typed_and_checked_together() -> None:
    """The relative-only metrics need the entity features; with them the settings load as given."""
    cfg = load_config(overrides=["features.entity_features=true", "features.metric_levels=false",
                                 "features.baseline_statistic=median"], conf_dir=CONF)
    assert (cfg.features.metric_levels, cfg.features.baseline_statistic) == (False, "median")
    assert (Config().features.metric_levels, Config().features.baseline_statistic) == (True, "mean")
