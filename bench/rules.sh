#!/usr/bin/env bash
# The cost of one policy decision at 10, 1,000 and 10,000 rules (half
# domain suffixes, half networks), for names and addresses that hit a
# rule and that miss every one. Target: under 1 us at 10,000, not growing
# with the rule count.
#   bench/rules.sh [rule counts...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ferryman-bench --bin rules
target/release/rules "$@"
