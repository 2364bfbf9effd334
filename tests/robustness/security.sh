#!/usr/bin/env bash
# Where plugins come from, and where Gloo listens.
#
#   gloo_listen_addr    with comm.host = 127.0.0.2 every socket a rank listens
#                       on (seen with `ss -ltnp` while it waits for a peer
#                       we hold stopped) is bound to 127.0.0.2, not 0.0.0.0
#   plugin_search_path  a plugin in the current directory is never loaded;
#                       empty entries do not mean "."; a relative entry of
#                       DMNIST_PLUGIN_PATH or --plugin-path is relative to
#                       the current directory (both the same way),
#                       experiment.plugin_path to the INI file's folder
#   plugin_shadowing    the first folder on the search path wins: a copy of
#                       a built-in plugin in a development folder is used
#                       (--plugin-path, DMNIST_PLUGIN_PATH, a config's
#                       plugin_path, --help-plugin TYPE CONFIG.ini) and
#                       --list-plugins names the shadowed file and by which;
#                       two files of one folder with one type are still refused
#   plugin_permissions  a plugin file, its folder, or a folder above it that
#                       other users may write is refused with a clear line
#   plugin_symlinks     symlinks through folders only we (or root) can change
#                       still load: a search folder that is a symlink, a file
#                       that is a chain of relative and absolute symlinks,
#                       '..' in a link, a sticky /tmp-like folder above; the
#                       same links made by nobody in a sticky folder do not
source "$(dirname "$0")/../common/lib.sh" dmnist-rob
CFG=$SRC/tests/robustness/small.ini

poison_so=${DMNIST_TEST_PLUGINS:?}/dm_test_poison.so
[ -f "$poison_so" ] || fail "no $poison_so (build the dm_test_poison target)"
use_poison=(--set data.type=poison --set data.train_size=64 --set data.test_size=16)

# refused DIR WANT: --dry-run with plugins from DIR must fail with exit 2 and
# one line holding WANT.
refused() {
    local out rc
    out=$("$RUN" --dry-run --plugin-path "$1" "${use_poison[@]}" "$CFG" 2>&1)
    rc=$?
    [ $rc = 2 ] && [[ $out == *"$2"* ]] && [ "$(echo "$out" | wc -l)" = 1 ] ||
        fail "expected exit 2 and '$2', got exit $rc: $out"
    echo "ok refused: $out"
}

case ${1:-} in
gloo_listen_addr)
    has_plugin gloo || skip "no gloo backend plugin"
    command -v ss >/dev/null || skip "no ss (iproute2)"
    host=127.0.0.2
    mkdir "$TMP/rdzv"
    args=(--set experiment.backend=gloo --set comm.host=$host --set experiment.timeout_s=30 "$CFG" 4)
    # rank 1 announces itself, then we freeze it: rank 0 then sits in Gloo's
    # connect, listening, waiting for rank 1's address.
    DMNIST_RANK=1 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" "$RUN" "${args[@]}" >"$TMP/r1.log" 2>&1 &
    p1=$!
    on_exit "kill -KILL $p1 2>/dev/null"
    for _ in $(seq 100); do [ -n "$(ls "$TMP/rdzv")" ] && break; kill -0 $p1 2>/dev/null || break; sleep 0.05; done
    [ -n "$(ls "$TMP/rdzv")" ] || { cat "$TMP/r1.log"; kill -0 $p1 2>/dev/null || wait $p1; fail "rank 1 never wrote to the rendezvous (exit status $?)"; }
    kill -STOP $p1
    DMNIST_RANK=0 DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" "$RUN" "${args[@]}" >"$TMP/r0.log" 2>&1 &
    p0=$!
    on_exit "kill -KILL $p0 2>/dev/null"
    listen=
    for _ in $(seq 100); do
        listen=$(ss -ltnpH | grep "pid=$p0,")
        [ -n "$listen" ] && break
        kill -0 $p0 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$listen" ] || { cat "$TMP/r0.log"; fail "rank 0 never listened"; }
    echo "rank 0 listens on:"
    echo "$listen" | awk '{ print "  " $4 }'
    bad=$(echo "$listen" | awk -v h="$host" '{ n = split($4, a, ":"); addr = substr($4, 1, length($4) - length(a[n]) - 1); if (addr != h) print $4 }')
    [ -z "$bad" ] || fail "rank 0 listens on $bad, not only on $host"
    kill -CONT $p1
    wait $p0 || { cat "$TMP/r0.log"; fail "rank 0 failed after rank 1 was let go"; }
    wait $p1 || { cat "$TMP/r1.log"; fail "rank 1 failed"; }
    ok "every listening socket is on $host (comm.host); the job then finished"
    ;;
plugin_search_path)
    mkdir -p "$TMP/cwd/plugins" "$TMP/conf/p" "$TMP/elsewhere/p"
    cp "$poison_so" "$TMP/cwd/"
    cp "$poison_so" "$TMP/cwd/plugins/"
    cp "$poison_so" "$TMP/conf/p/"
    cd "$TMP/cwd" || fail "cd"
    # a plugin lying in the current directory is not loaded, whatever the path says
    for path in "" ":" "::" "${DMNIST_PLUGIN_PATH:-}:" ":${DMNIST_PLUGIN_PATH:-}"; do
        out=$(DMNIST_PLUGIN_PATH=$path "$RUN" --dry-run "${use_poison[@]}" "$CFG" 2>&1)
        rc=$?
        [ $rc = 2 ] && [[ $out == *"unknown dataset type 'poison'"* ]] ||
            fail "DMNIST_PLUGIN_PATH='$path': exit $rc, the plugin in the current directory was used? $out"
        DMNIST_PLUGIN_PATH=$path "$RUN" --list-plugins | grep -q "$TMP/cwd" && fail "--list-plugins shows a file from the current directory"
    done
    echo "ok: nothing loaded from the current directory (empty entries are not '.')"
    # DMNIST_PLUGIN_PATH is relative to here too, and printed absolute
    DMNIST_PLUGIN_PATH=plugins "$RUN" --dry-run "${use_poison[@]}" "$CFG" >"$TMP/out" 2>"$TMP/err" ||
        fail "DMNIST_PLUGIN_PATH=plugins (relative to the current directory) failed: $(cat "$TMP/err")"
    grep -q "^; plugin path: .*$TMP/cwd/plugins" "$TMP/out" ||
        fail "DMNIST_PLUGIN_PATH=plugins is not $TMP/cwd/plugins: $(grep '^; plugin path' "$TMP/out")"
    echo "ok: DMNIST_PLUGIN_PATH=plugins resolves against the current directory"
    # --plugin-path is typed here: relative to here
    "$RUN" --dry-run --plugin-path plugins "${use_poison[@]}" "$CFG" >/dev/null 2>"$TMP/err" ||
        fail "--plugin-path plugins (relative to the current directory) failed: $(cat "$TMP/err")"
    echo "ok: --plugin-path plugins resolves against the directory it was typed in"
    # experiment.plugin_path is relative to the INI file, wherever we run from
    { cat "$CFG"; } | sed 's/^\[experiment\]/[experiment]\nplugin_path = p/' >"$TMP/conf/x.ini"
    cd "$TMP/elsewhere" || fail "cd"
    "$RUN" --dry-run "${use_poison[@]}" "$TMP/conf/x.ini" >/dev/null 2>"$TMP/err" || fail "absolute INI: $(cat "$TMP/err")"
    cd "$TMP" || fail "cd"
    "$RUN" --dry-run "${use_poison[@]}" conf/x.ini >"$TMP/out" 2>"$TMP/err" || fail "relative INI: $(cat "$TMP/err")"
    grep -q "^; plugin path: $TMP/conf/p:" "$TMP/out" || fail "plugin path is not absolute: $(grep '^; plugin path' "$TMP/out")"
    ok "experiment.plugin_path = p means the INI's folder's p, from any directory"
    ;;
plugin_shadowing)
    builtin=$(dirname "$("$RUN" --help-plugin sgd | sed -n "1s/^optimizer 'sgd' from \([^ ]*\) .*/\1/p")")
    [ -f "$builtin/dm_sgd.so" ] || fail "cannot tell where the built-in sgd is (got '$builtin')"
    mkdir -p "$TMP/w/dev" "$TMP/w/conf/devp"
    cp "$builtin/dm_sgd.so" "$TMP/w/dev/dm_sgd.so"
    cp "$builtin/dm_sgd.so" "$TMP/w/conf/devp/dm_sgd.so"
    chmod -R go-w "$TMP/w"
    cd "$TMP/w" || fail "cd"
    # from_dev WHAT ARGS...: --help-plugin sgd must name the development copy
    from_dev() {
        local what=$1 want=$2 out
        shift 2
        out=$("$@" 2>&1) || fail "$what: $out"
        [[ $(echo "$out" | head -1) == "optimizer 'sgd' from $want "* ]] || fail "$what: not the copy in $want: $out"
        echo "ok: $what uses $want"
    }
    from_dev "--plugin-path dev" "$TMP/w/dev/dm_sgd.so" "$RUN" --help-plugin sgd --plugin-path dev
    from_dev "DMNIST_PLUGIN_PATH=dev" "$TMP/w/dev/dm_sgd.so" env DMNIST_PLUGIN_PATH=dev "$RUN" --help-plugin sgd
    printf '[experiment]\nplugin_path = devp\n' >"$TMP/w/conf/x.ini"
    from_dev "--help-plugin sgd conf/x.ini" "$TMP/w/conf/devp/dm_sgd.so" "$RUN" --help-plugin sgd conf/x.ini
    "$RUN" --list-plugins --plugin-path dev >"$TMP/list" 2>&1 || fail "--list-plugins: $(cat "$TMP/list")"
    grep -Eq "^optimizer +sgd .* $TMP/w/dev/dm_sgd.so$" "$TMP/list" || { cat "$TMP/list"; fail "--list-plugins does not list the copy"; }
    grep -Eq "^optimizer +sgd +$builtin/dm_sgd.so \(shadowed by $TMP/w/dev/dm_sgd.so\)$" "$TMP/list" ||
        { cat "$TMP/list"; fail "--list-plugins does not say that $builtin/dm_sgd.so is shadowed"; }
    echo "ok: $(grep 'shadowed by' "$TMP/list")"
    # a run with the copy first: no 'already registered', and it trains
    run_ok "$TMP/run.log" "$RUN" --plugin-path dev --set optimizer.type=sgd "$CFG" 2
    # one folder, two files with one type: still refused, naming both
    cp dev/dm_sgd.so dev/dm_sgd_again.so
    run_fails "$TMP/dup.log" 2 "$RUN" --dry-run --plugin-path dev "$CFG"
    grep -q "dm_sgd_again.so: type name 'sgd' already registered by $TMP/w/dev/dm_sgd.so" "$TMP/dup.log" ||
        { cat "$TMP/dup.log"; fail "two files of one folder with one type were not refused"; }
    ok "the first folder on the search path wins; --list-plugins shows what it shadowed"
    ;;
plugin_permissions)
    accepted() {
        "$RUN" --dry-run --plugin-path "$1" "${use_poison[@]}" "$CFG" >/dev/null 2>"$TMP/err" ||
            fail "$2 was refused: $(cat "$TMP/err")"
        echo "ok accepted: $2"
    }
    d=$TMP/pp
    mkdir -m 0755 "$d"
    cp "$poison_so" "$d/"
    chmod 0644 "$d/dm_test_poison.so"
    accepted "$d" "a 0644 file in a 0755 folder"
    chmod o+w "$d/dm_test_poison.so"
    refused "$d" "dm_test_poison.so: refused: the file is writable by other users (mode 0646"
    chmod 0644 "$d/dm_test_poison.so"
    chmod 0757 "$d"
    refused "$d" "refused: folder $d is writable by other users (mode 0757"
    chmod 1777 "$d"
    refused "$d" "refused: folder $d is writable by other users (mode 1777"
    chmod 0755 "$d"
    mkdir -m 0777 "$TMP/open"
    chmod 0777 "$TMP/open"
    mkdir -m 0755 "$TMP/open/pp"
    cp "$poison_so" "$TMP/open/pp/"
    refused "$TMP/open/pp" "refused: folder $TMP/open is writable by other users (mode 0777"
    chmod 1777 "$TMP/open"
    accepted "$TMP/open/pp" "a plugin folder inside a sticky world-writable folder (like /tmp)"
    # group members are other users: a group-writable file is refused even when it is ours
    chmod 0664 "$d/dm_test_poison.so"
    refused "$d" "refused: the file is writable by other users (mode 0664"
    chmod 0644 "$d/dm_test_poison.so"
    if [ "$(id -u)" = 0 ]; then
        chown 4242 "$d/dm_test_poison.so"
        refused "$d" "refused: the file $d/dm_test_poison.so is owned by uid 4242, neither root nor us (uid 0)"
        chown 0 "$d/dm_test_poison.so"
    else
        echo "(not root: the file owned by another user is not checked)"
    fi
    ok "plugins others could replace are refused"
    ;;
plugin_symlinks)
    # loads DIR DESCRIPTION: the poison dataset from DIR is used
    loads() {
        "$RUN" --dry-run --plugin-path "$1" "${use_poison[@]}" "$CFG" >/dev/null 2>"$TMP/err" ||
            fail "$2 was refused: $(cat "$TMP/err")"
        [ -s "$TMP/err" ] && fail "$2: unexpected output on stderr: $(cat "$TMP/err")"
        echo "ok accepted: $2"
    }
    chmod 0755 "$TMP"
    mkdir -m 0755 "$TMP/real" "$TMP/links" "$TMP/hop" "$TMP/p"
    cp "$poison_so" "$TMP/real/"
    chmod 0644 "$TMP/real/dm_test_poison.so"
    ln -s "$TMP/real" "$TMP/links/folder"
    loads "$TMP/links/folder" "a search folder that is an absolute symlink"
    ln -s ../hop/h1 "$TMP/p/dm_test_poison.so"
    ln -s "$TMP/hop/h2" "$TMP/hop/h1"
    ln -s ../real/./dm_test_poison.so "$TMP/hop/h2"
    loads "$TMP/p" "a plugin that is a chain of three symlinks (relative, absolute, '..' and '.')"
    loads "$TMP/links/../p" "'..' in the search path"
    mkdir -m 1777 "$TMP/sticky"
    mkdir -m 0755 "$TMP/sticky/mine"
    ln -s ../../real/dm_test_poison.so "$TMP/sticky/mine/dm_test_poison.so"
    loads "$TMP/sticky/mine" "a folder of ours inside a sticky world-writable folder, holding a symlink"
    if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
        runuser -u nobody -- mkdir -m 0755 "$TMP/sticky/theirs" || fail "runuser -u nobody failed"
        runuser -u nobody -- ln -s "$TMP/real/dm_test_poison.so" "$TMP/sticky/theirs/dm_test_poison.so"
        refused "$TMP/sticky/theirs" "refused: folder $TMP/sticky/theirs is owned by uid $(id -u nobody)"
        runuser -u nobody -- ln -s "$TMP/real" "$TMP/sticky/planted"
        refused "$TMP/sticky/planted" "refused: folder $TMP/sticky (it holds the symlink) is writable by other users (mode 1777"
        ln -s "$TMP/sticky/planted" "$TMP/links/via"
        refused "$TMP/links/via" "refused: folder $TMP/sticky (it holds the symlink) is writable by other users"
    else
        echo "(not root: the links made by nobody are not checked)"
    fi
    ok "symlinks through trusted folders load, those others could change do not"
    ;;
*) echo "usage: security.sh gloo_listen_addr|plugin_search_path|plugin_permissions|plugin_symlinks"; exit 2 ;;
esac
