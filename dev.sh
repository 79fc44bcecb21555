#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs pytest-dbguard with its test
# extras, finds (or installs) PostgreSQL, then runs what was asked:
#   ./dev.sh examples   the examples suite under dbguard, on the embedded PostgreSQL
#   ./dev.sh test       the plugin's whole test suite (serially for the fast part, then -n 2)
#   ./dev.sh bench      the benchmarks
#   ./dev.sh tox [...]  the tox matrix (Python 3.10-3.13 found on PATH or in pyenv's versions)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv

pick_python() {
    for candidate in python3 python3.12 python3.11 python3.13 python3.10; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "dev.sh: no Python 3.10-3.13 found on PATH" >&2
    exit 1
}

ensure_venv() {
    local stamp=$VENV/.installed
    if [[ ! -x $VENV/bin/python ]]; then
        "$(pick_python)" -m venv "$VENV"
    fi
    if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
        touch "$stamp"
    fi
}

have_postgres() {
    command -v postgres >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
    command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]] && return 0
    return 1
}

ensure_postgres() {
    have_postgres && return 0
    echo "dev.sh: PostgreSQL binaries not found; installing them with apt-get" >&2
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
    have_postgres || { echo "dev.sh: PostgreSQL could not be installed" >&2; exit 1; }
}

# The pytest-postgresql comparison runs pytest-postgresql as the user PostgreSQL runs as (when we
# are root, 'postgres', which cannot enter /root where pyenv and .venv may live): give it a venv of
# its own in the temp folder, from the system Python, with this checkout installed as it is now.
ensure_peer_venv() {
    [[ -n ${BENCH_PEER_PYTHON:-} ]] && return 0
    local peer=${TMPDIR:-/tmp}/pytest-dbguard-bench-peer-$(id -u) python=/usr/bin/python3
    if [[ -e $peer && ( ! -O $peer || -L $peer ) ]]; then  # never run a venv someone else made
        echo "dev.sh: $peer is not ours; remove it, or set BENCH_PEER_PYTHON" >&2
        return 1
    fi
    if [[ $(id -u) -ne 0 ]] || ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
        python=$(pick_python)
    fi
    if [[ ! -f $peer/.installed ]]; then
        rm -rf "$peer"
        "$python" -m venv "$peer" &&
            "$peer/bin/pip" install --quiet pytest-postgresql 'psycopg[binary]' sqlalchemy pytest &&
            touch "$peer/.installed" || return 1
    fi
    # setuptools builds in ./build: clear it first, or a module removed since would ship again.
    rm -rf "$ROOT/build"
    "$peer/bin/pip" install --quiet --no-deps --force-reinstall "$ROOT" || return 1
    rm -rf "$ROOT/build"
    export BENCH_PEER_PYTHON=$peer/bin/python
}

run_examples() {
    local failed=0
    for example in examples/*/; do
        [[ -f $example/pytest.ini ]] || continue
        echo "=== $example (embedded PostgreSQL, then -n 2)"
        (cd "$example" && "$VENV/bin/python" -m pytest -p pytest_dbguard -v -p no:cacheprovider) || failed=1
        (cd "$example" && "$VENV/bin/python" -m pytest -p pytest_dbguard -p xdist -n 2 -q -p no:cacheprovider) || failed=1
    done
    return $failed
}

run_tests() {
    # The plugin's own suite: in-process unit tests serially, everything under -n 2.
    "$VENV/bin/python" -m pytest -p no:cacheprovider -n 2 --durations=10 "$@"
}

command=${1:-test}
shift || true
ensure_venv
ensure_postgres
case $command in
    examples) run_examples ;;
    test) run_tests "$@" ;;
    bench)
        ensure_peer_venv || echo "dev.sh: no venv for pytest-postgresql; its comparison is skipped" >&2
        "$VENV/bin/python" benchmarks/run_all.py "$@" ;;
    tox)
        # tox finds interpreters on PATH; pyenv's shims only answer for the selected version.
        for bin in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[0-3]*/bin; do
            [[ -d $bin ]] && PATH="$PATH:$bin"
        done
        PATH=$PATH "$VENV/bin/tox" "$@" ;;
    *) echo "usage: ./dev.sh examples|test|bench|tox" >&2; exit 2 ;;
esac
