# Sourced by tests/bench.sh and tests/benches/profile.sh. `build_compare PYTHON` builds the
# podscore binary and the inference_compare bench in one cargo invocation, so that the
# binary has the features the tests build it with (dev-dependencies unify features) and
# nothing is compiled twice, and prints the bench's path (PYTHON reads cargo's messages).
build_compare() {
  cargo build --release --locked --bin podscore --bench inference_compare --message-format=json |
    "$1" -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "inference_compare" and message.get("executable"):
        print(message["executable"])'
}
