#!/usr/bin/env bash
# Install a tool the deployment tests need into the project's cache
# (${PIPELINE_CACHE_DIR:-~/.cache/sensor-forecasts}) and print its path:
#   kustomize       kustomize, built from its Go module (Go module proxy) into bin/
#   compose-schema  the wheel of check-jsonschema (PyPI), whose vendored copy of the
#                   Compose Specification's JSON schema the Compose test reads; only
#                   downloaded, not installed: it needs a newer click than Faust allows
# Usage: scripts/install-deploy-tools.sh kustomize|compose-schema
# Safe to run again: it does nothing when the pinned version is already there. On failure
# it exits non-zero with the reason on stderr (the tests then skip and show it).
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.1
CHECK_JSONSCHEMA_VERSION=0.39.0
CACHE_DIR=${PIPELINE_CACHE_DIR:-$HOME/.cache/sensor-forecasts}

fail() {
  echo "install-deploy-tools: $*" >&2
  exit 1
}

install_kustomize() {
  local bin_dir=$CACHE_DIR/bin
  local tool=$bin_dir/kustomize
  if [ -x "$tool" ] && [ "$("$tool" version 2>/dev/null)" = "$KUSTOMIZE_VERSION" ]; then
    echo "$tool"
    return
  fi
  command -v go >/dev/null || fail "no Go toolchain (go) on PATH to build kustomize $KUSTOMIZE_VERSION"
  mkdir -p "$bin_dir"
  echo "install-deploy-tools: building kustomize $KUSTOMIZE_VERSION into $bin_dir" >&2
  # GOTOOLCHAIN=local: build with this machine's Go, never fetch another toolchain.
  GOBIN=$bin_dir GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >&2 \
    || fail "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed"
  echo "$tool"
}

install_compose_schema() {
  local wheel_dir=$CACHE_DIR/wheels
  local wheel=$wheel_dir/check_jsonschema-$CHECK_JSONSCHEMA_VERSION-py3-none-any.whl
  if [ -f "$wheel" ]; then
    echo "$wheel"
    return
  fi
  local python=${PYTHON:-.venv/bin/python}
  [ -x "$python" ] || fail "no Python at $python to download check-jsonschema with"
  mkdir -p "$wheel_dir"
  echo "install-deploy-tools: downloading check-jsonschema $CHECK_JSONSCHEMA_VERSION into $wheel_dir" >&2
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheel_dir" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2 \
    || fail "pip download check-jsonschema==$CHECK_JSONSCHEMA_VERSION failed"
  [ -f "$wheel" ] || fail "pip download did not leave $wheel"
  echo "$wheel"
}

case "${1:-}" in
  kustomize) install_kustomize ;;
  compose-schema) install_compose_schema ;;
  *) fail "usage: $0 kustomize|compose-schema" ;;
esac
