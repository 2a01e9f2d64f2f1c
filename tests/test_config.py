from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.models.captioner.model == "Salesforce/blip-image-captioning-base"
    assert settings.models.tagger.model == "ViT-B-32"
    assert settings.discord.token is None


def test_shipped_config_is_valid_and_matches_defaults():
    shipped = load_settings(Path(__file__).parent.parent / "config.toml", environ={})
    from bot.config import Settings

    assert shipped.model_dump(exclude={"base_dir"}) == Settings().model_dump(exclude={"base_dir"})


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = write(tmp_path, "[models.captioner]\nmax_new_token = 5\n")
    with pytest.raises(ConfigError, match=r"models\.captioner\.max_new_token: unknown key"):
        load_settings(path, environ={})


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"modles: unknown key"):
        load_settings(write(tmp_path, "[modles]\ndevice = 'cpu'\n"), environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[models]\ndevice = 'tpu'\n", "models.device"),
        ("[models.captioner]\nmax_new_tokens = 0\n", "models.captioner.max_new_tokens"),
        ("[queue]\nmax_batch_size = 'lots'\n", "queue.max_batch_size"),
        ("[llm]\nbase_url = 'localhost:11434'\n", "llm.base_url"),
        ("[models.sentiment]\nbackend = 'textblob'\n", "models.sentiment.backend"),
        ("[memory]\nport = 70000\n", "memory.port"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, text), environ={})
    assert f"{key}:" in str(error.value)
    assert "Traceback" not in str(error.value)


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[models\n"), environ={})


def test_token_comes_from_environment_and_is_never_printed(tmp_path):
    settings = load_settings(write(tmp_path, ""), environ={"DISCORD_TOKEN": "abc.def.ghi"})
    assert settings.discord.token is not None
    assert settings.discord.token.get_secret_value() == "abc.def.ghi"
    assert "abc.def.ghi" not in repr(settings)
    assert "abc.def.ghi" not in str(settings.model_dump())


def test_token_in_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"discord\.token: never put the token in a file"):
        load_settings(write(tmp_path, "[discord]\ntoken = 'abc'\n"), environ={})


def test_config_path_from_environment_variable(tmp_path, monkeypatch):
    path = write(tmp_path, "[models]\ndevice = 'cpu'\n")
    monkeypatch.setenv("IMAGEBOT_CONFIG", str(path))
    assert load_settings().models.device == "cpu"


def test_missing_config_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEBOT_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings()


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "my-model").mkdir()
    settings = load_settings(write(sub, "[memory]\npath = 'store'\n"), environ={})
    assert settings.resolve_path(settings.memory.path) == (sub / "store").resolve()
    assert settings.resolve_model("./my-model") == str((sub / "my-model").resolve())
    assert settings.resolve_model("Salesforce/blip-image-captioning-base") == "Salesforce/blip-image-captioning-base"
    # labels_dir falls back to the shipped label sets when the config's folder has none.
    assert (settings.labels_dir / "objects.txt").is_file()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[discord]\nshard_ids = [0]\n", "needs discord.shard_count"),
        ("[discord]\nshard_count = 2\nshard_ids = [0, 2]\n", "from 0 to 1"),
        ("[discord]\nshard_count = 2\nshard_ids = [1, 1]\n", "distinct"),
    ],
)
def test_shard_ranges_are_checked(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={})


def test_shard_range_for_one_of_several_processes(tmp_path):
    settings = load_settings(write(tmp_path, "[discord]\nshard_count = 4\nshard_ids = [2, 3]\n"), environ={})
    assert settings.discord.shard_ids == [2, 3]
