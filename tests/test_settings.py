"""Settings: defaults, YAML, PIPELINE_* overrides, and clear errors for bad values."""

from __future__ import annotations

import pytest

from pipeline.settings import MASK, SettingsError, describe, load_settings


def test_defaults_need_no_file_or_environment():
    settings = load_settings(environ={})
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert settings.job_window_seconds == 3600.0
    assert settings.model_path("prophet") == "pipeline.prediction.jobs.prophet_forecast"


def test_environment_overrides_yaml(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "poll_seconds: 30\njob_window_seconds: 600\nstart_time: 2024-05-01T00:00:00Z\n"
    )
    settings = load_settings(config, environ={"PIPELINE_POLL_SECONDS": "7.5"})
    assert settings.poll_seconds == 7.5
    assert settings.job_window_seconds == 600.0
    assert settings.start_time == 1714521600.0


def test_config_file_can_come_from_environment(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("topic_prefix: staging-\n")
    settings = load_settings(environ={"PIPELINE_CONFIG": str(config)})
    assert settings.topic("readings") == "staging-readings"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"PIPELINE_POLL_SECONDS": "abc"},
            "poll_seconds (environment variable PIPELINE_POLL_SECONDS)",
        ),
        ({"PIPELINE_POLL_SECONDS": "-1"}, "expected a positive number"),
        ({"PIPELINE_JOB_WINDOW_SECONDS": "nan"}, "job_window_seconds"),
        ({"PIPELINE_BROKER": "localhost:9092"}, "expected a URL starting with kafka://"),
        ({"PIPELINE_REDIS_URL": "http://x:1"}, "redis_url"),
        ({"PIPELINE_START_TIME": "yesterday"}, "expected epoch seconds or an ISO-8601 time"),
        ({"PIPELINE_POL_SECONDS": "5"}, "did you mean PIPELINE_POLL_SECONDS?"),
        ({"PIPELINE_WEB_PORT": "70000"}, "web_port"),
        ({"PIPELINE_BACKFILL_DAYS": "30"}, "expected 1 to 7 days"),
        ({"PIPELINE_DEFAULT_MODEL": "arima"}, "default_model: 'arima' is not one of the models"),
    ],
)
def test_bad_environment_values_are_named(environ, expected):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=environ)
    assert expected in str(info.value)


def test_yaml_typo_is_named_with_a_suggestion(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("job_windw_seconds: 60\n")
    with pytest.raises(
        SettingsError, match=r"unknown setting 'job_windw_seconds'.*job_window_seconds"
    ):
        load_settings(config, environ={})


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"PIPELINE_POLL_SECONDS": "0", "PIPELINE_WEB_PORT": "x"})
    assert "poll_seconds" in str(info.value) and "web_port" in str(info.value)


def test_unreadable_and_malformed_files_fail_clearly(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("poll_seconds: [1\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_secret_is_masked_in_every_printed_form():
    settings = load_settings(environ={"PIPELINE_SOURCE_API_KEY": "s3cr3t-key"})
    assert settings.source_api_key == "s3cr3t-key"
    for text in (repr(settings), str(settings), str(settings.as_dict())):
        assert "s3cr3t-key" not in text
        assert MASK in text


def test_require_names_the_environment_variable():
    with pytest.raises(SettingsError, match="PIPELINE_SOURCE_API_KEY"):
        load_settings(environ={}).require("source_api_key")


def test_describe_lists_the_settings_the_guide_promises():
    variables = {row[1] for row in describe()}
    assert {
        "PIPELINE_BROKER",
        "PIPELINE_REDIS_URL",
        "PIPELINE_SOURCE_URL",
        "PIPELINE_SOURCE_API_KEY",
        "PIPELINE_POLL_SECONDS",
        "PIPELINE_JOB_WINDOW_SECONDS",
        "PIPELINE_START_TIME",
    } <= variables
