#!/usr/bin/env bash
# Stage an install of this build into a temporary prefix, move the prefix
# (everything must be relocatable), then do what docs/writing-a-layer-plugin.md
# tells a plugin author to do, from copies of docs/examples/plugins/:
#   - build leaky_relu and batchnorm with find_package(dmnist) + dmnist_add_plugin,
#     and leaky_relu again with its plain Makefile and pkg-config;
#   - build every complete C listing of the layer, optimizer and dataset guides
#     with the cc command they give, check each (the optimizer guide's with its
#     --reference file) and train with the dataset guide's config;
#   - check each with the installed dmnist-plugin-check;
#   - train a few steps of each example config with the installed dmnist-run
#     (data/mnist when present, else the synthetic dataset), no DMNIST_PLUGIN_PATH;
#   - test a comm backend with the installed multi-rank harness through
#     dmnist_add_comm_test() (a copy of the installed local backend standing
#     in for the author's, and gloo on 2 ranks when installed);
#   - install leaky_relu next to the built-in plugins and find it there.
set -euo pipefail
src=${DMNIST_SOURCE_DIR:?run through ctest}
build=${DMNIST_BUILD_DIR:?run through ctest}
unset DMNIST_PLUGIN_PATH # the installed tools must find their plugins alone

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmnist-sdk-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

step "install into a staging prefix, then move it"
cmake --install "$build" --prefix "$tmp/stage" > "$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }
mv "$tmp/stage" "$tmp/prefix"
P=$tmp/prefix
for f in bin/dmnist-run bin/dmnist-plugin-check bin/dmnist-comm-check bin/dmnist-comm-job include/dmnist/abi.h include/dmnist/layer.h \
         lib/cmake/dmnist/dmnistConfig.cmake lib/cmake/dmnist/dmnistConfigVersion.cmake \
         lib/cmake/dmnist/dmnistTargets.cmake lib/cmake/dmnist/dmnistPlugin.cmake \
         lib/pkgconfig/dmnist.pc lib/dmnist/plugins/dm_conv2d.so lib/dmnist/plugins/dm_local.so; do
    [ -e "$P/$f" ] || fail "the install lacks $f"
done
echo "installed files present"

step "the installed dmnist-run finds the installed plugins (no environment variable)"
"$P/bin/dmnist-run" --list-plugins > "$tmp/list.txt"
cat "$tmp/list.txt"
grep -q "$P/lib/dmnist/plugins/dm_conv2d.so" "$tmp/list.txt" ||
    fail "dmnist-run --list-plugins does not list $P/lib/dmnist/plugins/dm_conv2d.so"
if grep -q "$build/plugins" "$tmp/list.txt"; then fail "the installed dmnist-run loaded plugins from the build tree"; fi

step "pkg-config"
export PKG_CONFIG_PATH=$P/lib/pkgconfig
[ "$(pkg-config --modversion dmnist)" != "" ] || fail "pkg-config: no version"
inc=$(pkg-config --variable=includedir dmnist)
[ -f "$inc/dmnist/abi.h" ] || fail "pkg-config includedir $inc has no dmnist/abi.h"
[ -d "$(pkg-config --variable=pluginsdir dmnist)" ] || fail "pkg-config pluginsdir is not a folder"
[ -x "$(pkg-config --variable=plugin_check dmnist)" ] || fail "pkg-config plugin_check is not executable"
echo "cflags: $(pkg-config --cflags dmnist)"

step "build the examples out of tree"
mkdir -p "$tmp/src"
cp -r "$src/docs/examples/plugins/leaky_relu" "$src/docs/examples/plugins/batchnorm" "$tmp/src/"
cp -r "$src/docs/examples/plugins/leaky_relu" "$tmp/src/leaky_relu_make"
rm -rf "$tmp/src"/*/build # a stale build from the source tree must not be used
for ex in leaky_relu batchnorm; do
    cmake -S "$tmp/src/$ex" -B "$tmp/src/$ex/build" -DCMAKE_PREFIX_PATH="$P" \
          -DCMAKE_C_FLAGS=-Werror > "$tmp/$ex.cmake.log" || { cat "$tmp/$ex.cmake.log"; fail "configure $ex"; }
    cmake --build "$tmp/src/$ex/build" || fail "build $ex"
    [ -f "$tmp/src/$ex/build/plugins/dm_$ex.so" ] || fail "no build/plugins/dm_$ex.so for $ex"
done
make -C "$tmp/src/leaky_relu_make" CFLAGS="-O2 -Werror" || fail "make (pkg-config) leaky_relu"
[ -f "$tmp/src/leaky_relu_make/build/plugins/dm_leaky_relu.so" ] || fail "the Makefile built no build/plugins/dm_leaky_relu.so"

step "the guides' complete C listings build with pkg-config as they say, and pass the checker"
# Every ```c block that starts with #include is a whole plugin; a ```reference
# block is a dmnist-plugin-check --reference file for that guide's listings;
# the last ```ini block of the dataset guide trains with its plugin.
for guide in a-layer an-optimizer a-dataset; do
    md=$src/docs/writing-$guide-plugin.md
    guide=${guide#*-}
    [ -f "$md" ] || fail "no $md"
    dir=$tmp/guide-$guide
    mkdir -p "$dir"
    awk -v dir="$dir" '
        /^```c$/         { inb = 1; n++; file = sprintf("%s/listing%d.c", dir, n); next }
        /^```reference$/ { inb = 1; file = dir "/reference.txt"; next }
        /^```ini$/       { inb = 1; file = dir "/example.ini"; printf "" > file; next }
        /^```$/          { if (inb) close(file); inb = 0; next }
        inb              { print > file }' "$md"
    ref=()
    [ -f "$dir/reference.txt" ] && ref=(--reference "$dir/reference.txt")
    listings=0
    for c in "$dir"/listing*.c; do
        [ -f "$c" ] || continue
        head -1 "$c" | grep -q '^#include' || continue # a fragment, not a file
        name=$(sed -n 's/^DM_PLUGIN_DEFINE("\([a-z_0-9]*\)".*/\1/p' "$c")
        so=$dir/dm_${name:-$(basename "${c%.c}")}.so
        cc -std=c11 -fPIC -fvisibility=hidden -Wall -Wextra -Werror $(pkg-config --cflags dmnist) -O2 \
           -shared -Wl,--no-undefined -o "$so" "$c" $(pkg-config --libs dmnist) ||
            fail "$guide guide: listing $(basename "$c") does not build"
        "$P/bin/dmnist-plugin-check" "${ref[@]}" "$so" > "$c.check" ||
            { cat "$c.check"; fail "$guide guide: listing $(basename "$c") fails the checker ${ref[*]}"; }
        if [ ${#ref[@]} -gt 0 ]; then
            grep -Eq "reference \(cpu\) +ok" "$c.check" || { cat "$c.check"; fail "$guide guide: no reference row passed"; }
        fi
        listings=$((listings + 1))
    done
    want=1
    [ $guide = layer ] && want=3
    [ "$listings" -ge $want ] || fail "only $listings complete C listings found in $md"
    echo "$guide guide: $listings listings built and checked${ref:+ (with its --reference file)}"
done
# the dataset guide's config trains on its plugin, found through plugin_path = .
chmod -R go-w "$tmp/guide-dataset"
(cd "$tmp" && "$P/bin/dmnist-run" --no-progress --set train.total_batches=4 --set train.log_every=1 \
    "$tmp/guide-dataset/example.ini") > "$tmp/guide-dataset/train.log" 2>&1 ||
    { cat "$tmp/guide-dataset/train.log"; fail "the dataset guide's config does not train"; }
grep -Eq "^test loss [0-9]+\.[0-9]+ +test accuracy" "$tmp/guide-dataset/train.log" ||
    { cat "$tmp/guide-dataset/train.log"; fail "the dataset guide's config: no test evaluation"; }
echo "dataset guide: its config trains"

step "dmnist-plugin-check on each"
# through dmnist_add_plugin_test() in the examples' CMakeLists.txt
for ex in leaky_relu batchnorm; do
    ctest --test-dir "$tmp/src/$ex/build" --output-on-failure > "$tmp/$ex.ctest.log" 2>&1 || {
        cat "$tmp/$ex.ctest.log"; fail "ctest (dmnist_add_plugin_test) for $ex"; }
    grep -q "plugin_check_$ex .*Passed" "$tmp/$ex.ctest.log" || { cat "$tmp/$ex.ctest.log"; fail "no plugin_check_$ex test ran"; }
done
make -C "$tmp/src/leaky_relu_make" check || fail "make check (leaky_relu, pkg-config)"

step "train a few steps with each example config"
data=()
if [ -f "$src/data/mnist/train-images-idx3-ubyte.gz" ] || [ -f "$src/data/mnist/train-images-idx3-ubyte" ]; then
    data=(--set "data.path=$src/data/mnist")
    echo "data: MNIST from $src/data/mnist"
else
    data=(--set data.type=synthetic --set data.train_size=2048 --set data.test_size=512)
    echo "data: synthetic ($src/data/mnist not present)"
fi
for ex in leaky_relu batchnorm; do
    (cd "$tmp" && "$P/bin/dmnist-run" --no-progress "${data[@]}" --set train.total_batches=4 \
        --set train.log_every=1 "$tmp/src/$ex/$ex.ini") > "$tmp/$ex.train.log" 2>&1 || {
        cat "$tmp/$ex.train.log"; fail "training with $ex"; }
    cat "$tmp/$ex.train.log"
    grep -Eq "^step +4/4 .*loss [0-9]+\.[0-9]+" "$tmp/$ex.train.log" || fail "$ex: no finite loss at step 4"
    grep -Eq "^test loss [0-9]+\.[0-9]+ +test accuracy" "$tmp/$ex.train.log" || fail "$ex: no test evaluation"
    # the layer really is in the model (not silently something else)
    "$P/bin/dmnist-run" --dry-run "${data[@]}" "$tmp/src/$ex/$ex.ini" | grep -q " $ex " ||
        fail "$ex: the model summary has no $ex layer"
done

step "the installed comm harness: dmnist_add_comm_test() in a project of its own"
mkdir -p "$tmp/src/commtest/build/plugins"
cp "$P/lib/dmnist/plugins/dm_local.so" "$tmp/src/commtest/build/plugins/" # the author's backend, built here
cat > "$tmp/src/commtest/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(commtest C)
find_package(dmnist REQUIRED)
enable_testing()
dmnist_add_comm_test(comm_local_np1 local 1)
if(EXISTS ${dmnist_PLUGIN_DIR}/dm_gloo.so)
  dmnist_add_comm_test(comm_gloo_np2 gloo 2 TIMEOUT 90)
endif()
CMAKE
cmake -S "$tmp/src/commtest" -B "$tmp/src/commtest/build" -DCMAKE_PREFIX_PATH="$P" > "$tmp/commtest.cmake.log" ||
    { cat "$tmp/commtest.cmake.log"; fail "configure the comm test project"; }
ctest --test-dir "$tmp/src/commtest/build" --output-on-failure > "$tmp/commtest.log" 2>&1 || {
    cat "$tmp/commtest.log"; fail "ctest (dmnist_add_comm_test)"; }
grep -q "comm_local_np1 .*Passed" "$tmp/commtest.log" || { cat "$tmp/commtest.log"; fail "no comm_local_np1 test ran"; }
grep -E "comm_.*(Passed|Skipped)" "$tmp/commtest.log"

step "install an example next to the built-in plugins"
cmake --install "$tmp/src/leaky_relu/build" --prefix "$P" > /dev/null || fail "cmake --install leaky_relu"
[ -f "$P/lib/dmnist/plugins/dm_leaky_relu.so" ] || fail "leaky_relu was not installed into $P/lib/dmnist/plugins"
"$P/bin/dmnist-run" --help-plugin leaky_relu | grep -q alpha || fail "the installed dmnist-run does not find the installed leaky_relu"
echo "found: $("$P/bin/dmnist-run" --list-plugins | grep leaky_relu)"

echo
echo "sdk examples: all steps passed"
