"""Settings: one YAML file plus ``PIPELINE_*`` environment overrides.

Every role (Faust worker, prediction worker, dashboard, simulator, CLI) reads
the same ``Settings`` object, so a value means the same thing everywhere. Bad
values stop start-up with one message that names every offending setting by
both its YAML key and its environment variable, because a typo found at
start-up costs seconds and one found at 3 a.m. costs a night.

Resolution order (later wins): built-in defaults, the YAML file named by
``PIPELINE_CONFIG`` (or passed explicitly), then ``PIPELINE_<KEY>`` variables.
Secrets are masked whenever settings are printed or logged.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import yaml

ENV_PREFIX = "PIPELINE_"
CONFIG_ENV = "PIPELINE_CONFIG"
# Variables with the prefix that are read elsewhere, not settings.
NON_SETTING_ENV = {CONFIG_ENV, "PIPELINE_CACHE_DIR"}
MASK = "********"
# Not a model but the choice among ``selection_candidates`` (pipeline.prediction.serving);
# always available, whatever ``models`` lists.
SERVED_MODEL = "auto"
SERVED_JOB = "pipeline.prediction.serving.served_forecast"


class SettingsError(ValueError):
    """Raised when settings are missing, malformed or out of range."""


def _positive_float(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive number, got {value!r}")
    return number


def _port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a port number, got {value!r}")
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"expected a port number between 1 and 65535, got {value!r}")
    return port


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):
        raise ValueError(f"expected a positive whole number, got {value!r}")
    number = int(float(value))
    if number <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)) or int(float(value)) < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return int(float(value))


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def _history_days(value: Any) -> int:
    """Sensibo serves at most 7 days of history per request."""
    days = _positive_int(value)
    if days > 7:
        raise ValueError(f"expected 1 to 7 days (the device API's limit), got {value!r}")
    return days


def parse_time(value: Any) -> float:
    """Accept epoch seconds or an ISO-8601 timestamp (UTC if no zone given)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected epoch seconds or an ISO-8601 time, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _url(*schemes: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.netloc:
            allowed = " or ".join(f"{s}://" for s in schemes)
            raise ValueError(f"expected a URL starting with {allowed}, got {text!r}")
        return text.rstrip("/")

    return parse


def _mask_url_password(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:********@host``."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}{MASK}@{host}"))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _upper_choice(*choices: str) -> Callable[[Any], str]:
    """A choice spelled as the upstream tool spells it (Kafka's names are upper case)."""

    def parse(value: Any) -> str:
        text = str(value).strip().upper()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _origins(value: Any) -> list[str]:
    """Websocket origins as the browser sends them: host or host:port, a list or comma-separated."""
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    origins = [str(item).strip() for item in items if str(item).strip()]
    for origin in origins:
        if "/" in origin or " " in origin:
            raise ValueError(f"expected host or host:port (no scheme or path), got {origin!r}")
    return origins


def _models(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("expected a mapping of model name to dotted path")
    models = {}
    for name, path in value.items():
        if not isinstance(path, str) or "." not in path:
            raise ValueError(f"model {name!r}: expected a dotted path, got {path!r}")
        models[str(name)] = path
    return models


def _mapping_of(parse_value: Callable[[Any], Any], what: str) -> Callable[[Any], dict]:
    """A mapping of names (device ids, model names) to values of one kind."""

    def parse(value: Any) -> dict:
        if value in (None, ""):
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping of name to {what}, got {value!r}")
        parsed = {}
        for name, item in value.items():
            try:
                parsed[str(name)] = parse_value(item)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name!r}: {exc}") from None
        return parsed

    return parse


def _names(value: Any) -> list[str]:
    """Names as a list or comma-separated, in order, at least one."""
    items = value if isinstance(value, list | tuple) else str(value or "").split(",")
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names:
        raise ValueError("expected at least one name")
    return names


def _name(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("expected a name")
    return text


def _setting(default: Any, parse: Callable[[Any], Any], help: str, secret: bool = False) -> Any:
    return dataclasses.field(
        default_factory=lambda: copy.deepcopy(default),
        metadata={"parse": parse, "help": help, "secret": secret},
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the pipeline can be told; see the README's settings table."""

    broker: str = _setting(
        "kafka://127.0.0.1:9092", _url("kafka"), "Kafka bootstrap server, kafka://host:port"
    )
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0", _url("redis", "rediss"), "Redis for readings, jobs, forecasts"
    )
    source_url: str = _setting(
        "https://home.sensibo.com/api/v2", _url("http", "https"), "Device API base URL (Sensibo v2)"
    )
    source_api_key: str = _setting(
        "", _text, "Device API key (apiKey query parameter)", secret=True
    )
    source_ca_file: str = _setting(
        "", _text, "Extra CA bundle (PEM) trusted for the device API, besides the system's"
    )
    kafka_security_protocol: str = _setting(
        "PLAINTEXT",
        _upper_choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        "Kafka link: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (TLS + login)",
    )
    kafka_sasl_mechanism: str = _setting(
        "SCRAM-SHA-512",
        _upper_choice("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"),
        "Kafka SASL login mechanism (with SASL_*)",
    )
    kafka_username: str = _setting("", _text, "Kafka SASL user name (with SASL_*)")
    kafka_password: str = _setting("", _text, "Kafka SASL password (with SASL_*)", secret=True)
    kafka_ca_file: str = _setting(
        "",
        _text,
        "Extra CA bundle (PEM) trusted for the Kafka broker, besides the system's "
        "(with SSL, SASL_SSL)",
    )
    redis_username: str = _setting(
        "", _text, "Redis ACL user; empty: the default user (password only)"
    )
    redis_password: str = _setting(
        "", _text, "Redis password (AUTH), kept out of redis_url", secret=True
    )
    redis_ca_file: str = _setting(
        "",
        _text,
        "CA bundle (PEM) Redis's certificate is checked against (with rediss://); "
        "empty: the system's",
    )
    poll_seconds: float = _setting(60.0, _positive_float, "Seconds between polls of the device API")
    backfill_days: int = _setting(
        1, _history_days, "Days of history fetched for a new device (1-7)"
    )
    poll_concurrency: int = _setting(
        16, _positive_int, "Device API requests in flight at once (connector)"
    )
    source_rate_limit_per_second: float = _setting(
        20.0, _positive_float, "Client-side cap on device API requests per second"
    )
    source_timeout_seconds: float = _setting(
        10.0, _positive_float, "Longest wait for one device API answer"
    )
    source_attempts: int = _setting(
        4, _positive_int, "Tries per device API request before the device waits a poll"
    )
    source_backoff_seconds: float = _setting(
        0.5, _positive_float, "First retry delay (doubles per try, jittered, capped at a poll)"
    )
    future_tolerance_seconds: float = _setting(
        300.0, _positive_float, "How far past the device API's clock a reading may lie"
    )
    dedup_horizon_seconds: float = _setting(
        3600.0, _positive_float, "How late a reading may arrive and still be deduplicated exactly"
    )
    job_window_seconds: float = _setting(
        3600.0, _positive_float, "Event-time span that closes a prediction window"
    )
    start_time: float = _setting(
        0.0, parse_time, "No jobs for windows starting before this (epoch s or ISO-8601)"
    )
    models: dict = _setting(
        {
            "prophet": "pipeline.prediction.jobs.prophet_forecast",
            "seasonal_naive": "pipeline.prediction.jobs.seasonal_naive_forecast",
            "ets": "pipeline.prediction.jobs.ets_forecast",
        },
        _models,
        "Model name -> dotted path of the job function the workers run",
    )
    default_model: str = _setting(
        SERVED_MODEL,
        _text,
        "Model used for a device with no override; auto: the best recent selection_candidates",
    )
    selection_candidates: list = _setting(
        ["ets", "seasonal_naive", "prophet"],
        _names,
        "Models the auto model fits every window and chooses from (first: served until scored)",
    )
    selection_policy: str = _setting(
        "best",
        _choice("best", "weighted"),
        "auto serves the lowest recent MAE (best) or a 1/MAE^2-weighted average (weighted)",
    )
    selection_windows: int = _setting(
        24, _positive_int, "Past windows whose forecasts the auto model scores to choose"
    )
    device_models: dict = _setting(
        {}, _mapping_of(_name, "model name"), "Device id -> model, overriding default_model"
    )
    device_windows: dict = _setting(
        {},
        _mapping_of(_positive_float, "window in seconds"),
        "Device id -> job window in seconds, overriding job_window_seconds",
    )
    queue_name: str = _setting("forecasts", _text, "RQ queue the prediction jobs go to")
    model_queues: dict = _setting(
        {}, _mapping_of(_name, "queue name"), "Model name -> RQ queue, overriding queue_name"
    )
    silent_after_seconds: float = _setting(
        300.0, _positive_float, "Wall-clock seconds without a new reading before a device is silent"
    )
    job_timeout_seconds: float = _setting(300.0, _positive_float, "Longest a single fit may run")
    training_seconds: float = _setting(
        2 * 86400.0, _positive_float, "Event-time span of readings a model is fitted on"
    )
    horizon_seconds: float = _setting(6 * 3600.0, _positive_float, "How far ahead a forecast goes")
    forecast_step_seconds: float = _setting(600.0, _positive_float, "Spacing of forecast points")
    seasonal_period_seconds: float = _setting(
        86400.0, _positive_float, "Season of the seasonal-naive model (a day)"
    )
    job_retries: int = _setting(
        3, _non_negative_int, "Re-runs of a job that failed transiently or lost its worker"
    )
    job_retry_seconds: float = _setting(
        10.0, _positive_float, "Wait before a job's first re-run; doubles with each further one"
    )
    worker_heartbeat_seconds: int = _setting(
        30, _positive_int, "Worker heartbeat; a job is re-run after two are missed (worker lost)"
    )
    anomaly_margin: float = _setting(
        1.0, _non_negative_float, "A reading this far (Celsius) outside the interval is an anomaly"
    )
    app_id: str = _setting("sensor-forecasts", _text, "Faust app id (consumer group, table names)")
    topic_prefix: str = _setting("", _text, "Prefix for every topic name (isolates deployments)")
    topic_partitions: int = _setting(4, _positive_int, "Partitions of the pipeline's topics")
    replication_factor: int = _setting(
        1, _positive_int, "Replicas of each topic the workers create (3 on a production cluster)"
    )
    processing_guarantee: str = _setting(
        "exactly_once",
        _choice("exactly_once", "at_least_once"),
        "Faust processing guarantee for the stream agents",
    )
    table_store: str = _setting(
        "memory",
        _choice("memory", "rocksdb"),
        "Table state: memory (rebuilt from the committed changelog) or rocksdb (on disk)",
    )
    standby_replicas: int = _setting(
        1, _non_negative_int, "Standby copies of each table partition kept by other workers"
    )
    session_timeout_seconds: float = _setting(
        60.0,
        _positive_float,
        "How long a silent worker keeps its partitions before others take them over",
    )
    group_instance_id: str = _setting(
        "",
        _text,
        "Static group membership id (e.g. the pod name): a restart keeps its partitions",
    )
    web_port: int = _setting(6066, _port, "Faust web view port")
    web_host: str = _setting(
        socket.gethostname(),
        _name,
        "Host name other workers use to reach this worker's web view (routing)",
    )
    dashboard_port: int = _setting(5006, _port, "Bokeh dashboard port")
    dashboard_refresh_seconds: float = _setting(
        2.0, _positive_float, "Seconds between dashboard updates"
    )
    dashboard_origins: list = _setting(
        [],
        _origins,
        "Hosts the dashboard page may be opened from (websocket origins); empty: "
        "localhost and 127.0.0.1 on dashboard_port",
    )
    faust_web_url: str = _setting(
        "http://127.0.0.1:6066",
        _url("http", "https"),
        "Faust web view the dashboard reads device pointers from (match web_port)",
    )
    data_dir: str = _setting(".local", _text, "Folder for local service data, table state, logs")
    log_format: str = _setting(
        "text", _choice("text", "json"), "Log lines as text or as JSON objects (one per line)"
    )
    worker_metrics_port: int = _setting(
        9100, _port, "Prometheus /metrics port of each prediction worker (queue and fits)"
    )

    def topic(self, name: str) -> str:
        """Return the full name of a pipeline topic, with the deployment prefix."""
        return f"{self.topic_prefix}{name}"

    def model_path(self, model: str) -> str:
        """Return the dotted path of a registered model's job function."""
        if model == SERVED_MODEL and model not in self.models:
            return SERVED_JOB
        try:
            return self.models[model]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise SettingsError(f"unknown model {model!r}; registered: {known}") from None

    def model_for(self, device_id: str) -> str:
        """The model that serves a device: its override, else the default."""
        return self.device_models.get(device_id, self.default_model)

    def window_for(self, device_id: str) -> float:
        """The job window of a device: its override, else the global one."""
        return self.device_windows.get(device_id, self.job_window_seconds)

    def queue_for(self, model: str) -> str:
        """The RQ queue a model's jobs go to."""
        return self.model_queues.get(model, self.queue_name)

    def queues(self) -> list[str]:
        """Every queue some model's jobs can go to (what workers listen on)."""
        return sorted({self.queue_name, *self.model_queues.values()})

    def require(self, *names: str) -> None:
        """Fail with a clear message if a setting a role depends on is empty."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            raise SettingsError(
                "missing required setting(s): "
                + ", ".join(f"{n} (env {ENV_PREFIX}{n.upper()})" for n in missing)
            )

    def as_dict(self, *, masked: bool = True) -> dict[str, Any]:
        """Return all settings; secrets are masked unless asked otherwise."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if masked and field.metadata["secret"] and value:
                value = MASK
            elif masked and isinstance(value, str) and urlsplit(value).password:
                value = _mask_url_password(value)
            out[field.name] = value
        return out

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, for scrubbing log lines.

        Secret fields plus the password part of any URL setting (a Redis URL may carry
        one), longest first so that a secret containing another is replaced whole.
        """
        found = set()
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata["secret"] and value:
                found.add(str(value))
            elif isinstance(value, str) and "://" in value:
                password = urlsplit(value).password
                if password:
                    found.add(unquote(password))
                    found.add(password)
        return sorted(found, key=len, reverse=True)

    def __repr__(self) -> str:
        pairs = ", ".join(f"{k}={v!r}" for k, v in self.as_dict(masked=True).items())
        return f"Settings({pairs})"

    __str__ = __repr__


def describe() -> list[tuple[str, str, str, str]]:
    """Return (yaml key, env var, default, help) for every setting."""
    rows = []
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        default = getattr(defaults, field.name)
        shown = "(secret)" if field.metadata["secret"] else repr(default)
        rows.append((field.name, ENV_PREFIX + field.name.upper(), shown, field.metadata["help"]))
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of setting: value")
    return data


def _env_value(field: dataclasses.Field, raw: str) -> Any:
    """Environment values are strings; structured ones are given as YAML."""
    if isinstance(field.default_factory(), dict):
        return yaml.safe_load(raw)
    return raw


def _env(name: str) -> str:
    return f"{name} (env {ENV_PREFIX}{name.upper()})"


def _link_problems(given: Mapping[str, Any]) -> list[str]:
    """Security settings that cannot work together, found before any connection is tried.

    A missing Kafka login or CA file is found by ``pipeline.connections`` when a role
    builds the client that needs it, so a role that never talks to Kafka needs neither.
    """
    values = {**Settings().as_dict(masked=False), **given}
    problems = []
    protocol = values["kafka_security_protocol"]
    if values["kafka_ca_file"] and protocol not in ("SSL", "SASL_SSL"):
        problems.append(
            f"kafka_ca_file is set but kafka_security_protocol is {protocol}, which has no TLS"
        )
    redis_url = urlsplit(values["redis_url"])
    if values["redis_ca_file"] and redis_url.scheme != "rediss":
        problems.append("redis_ca_file is set but redis_url is not rediss:// (no TLS)")
    if values["redis_password"] and redis_url.password:
        problems.append("the Redis password is given twice: in redis_password and in redis_url")
    if values["redis_username"] and not (values["redis_password"] or redis_url.password):
        problems.append(f"redis_username is set without {_env('redis_password')}")
    return problems


def load_settings(
    path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build validated settings from defaults, a YAML file and the environment.

    Raises ``SettingsError`` naming every bad or unknown setting at once.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}

    config_path = path or environ.get(CONFIG_ENV)
    if config_path:
        for key, value in _read_yaml(Path(config_path)).items():
            if key not in fields:
                hint = difflib.get_close_matches(str(key), fields, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                problems.append(f"unknown setting {key!r} in {config_path}{suggestion}")
                continue
            raw[key] = (value, f"{key!r} in {config_path}")

    known_env = {ENV_PREFIX + name.upper(): name for name in fields}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var in NON_SETTING_ENV:
            continue
        name = known_env.get(var)
        if name is None:
            hint = difflib.get_close_matches(var, known_env, n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            problems.append(f"unknown environment variable {var}{suggestion}")
            continue
        raw[name] = (_env_value(fields[name], value), f"environment variable {var}")

    values: dict[str, Any] = {}
    for name, (value, origin) in raw.items():
        field = fields[name]
        try:
            values[name] = field.metadata["parse"](value)
        except (TypeError, ValueError) as exc:
            shown = MASK if field.metadata["secret"] else None
            reason = "invalid value" if shown else str(exc)
            problems.append(f"{name} ({origin}): {reason}")

    defaults = Settings()
    models = values.get("models", defaults.models)
    known = ", ".join(sorted(models))
    default_model = values.get("default_model", defaults.default_model)
    if default_model not in models and default_model != SERVED_MODEL:
        problems.append(f"default_model: {default_model!r} is not one of the models ({known})")
    for device, model in values.get("device_models", {}).items():
        if model not in models and model != SERVED_MODEL:
            problems.append(f"device_models: {device!r} uses unknown model {model!r} ({known})")
    for model in values.get("selection_candidates", []):  # defaults missing from models: skipped
        if model not in models:
            problems.append(f"selection_candidates: unknown model {model!r} ({known})")
    for model in values.get("model_queues", {}):
        if model not in models:
            problems.append(f"model_queues: unknown model {model!r} ({known})")
    if not problems:
        problems += _link_problems(values)

    if problems:
        raise SettingsError("invalid settings:\n  - " + "\n  - ".join(problems))
    return Settings(**values)
