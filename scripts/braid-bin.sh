# Sourced by the experiment scripts: sets `braid` to the binary they run ($BRAID, by default
# the release build, which is built first when it is missing).
braid=${BRAID:-./target/release/braid}
[ -x "$braid" ] || cargo build --release -p braid >&2
