#!/usr/bin/env bash
# Vireo's whole test suite: unit and KVM tests (swift test, release build), then the nested
# testbed scenarios that boot Debian's stock kernel. Tests that need /dev/kvm or the testbed
# run whenever the machine has them; anything skipped is listed at the end with the reason.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
skipped=()
status=0

echo "== guest assets (Debian's stock kernel + busybox initramfs, for the real-kernel tests)"
bash scripts/guest-assets.sh out/guest 2>&1 | tail -n 2 || status=1

echo "== swift test (release)"
swift build -c release --build-tests 2>&1 | grep -vE '^\[[0-9]+/[0-9]+\]' | tail -n 20
swift test -c release --skip-build > out-swift-test.log 2>&1
rc=$?
grep -vE '^(Test Case|Test Suite|\s*Executed 0 tests)|◇ Test .* started|↳' out-swift-test.log
((rc == 0)) || status=1
grep -aiE 'skipped|^SKIP' out-swift-test.log | sort -u | sed 's/^/skipped (swift test): /'
rm -f out-swift-test.log

echo "== browser tests (headless Chromium drives the web console; screenshots in out/browser/)"
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]] || ! /usr/bin/python3 -c 'import selenium' 2>/dev/null; then
  skipped+=("browser tests: Debian's chromium, chromium-driver or python3-selenium is missing (scripts/setup.sh installs them)")
  status=1
elif [[ ! -w /dev/kvm ]]; then
  skipped+=("browser tests: /dev/kvm is not usable here; the test runs probe VMs")
  status=1
else
  timeout 300 /usr/bin/python3 tests/browser/test_web_console.py .build/release/vireo || status=1
fi

echo "== testbed scenarios (nested SVM KVM under QEMU TCG)"
if command -v qemu-system-x86_64 >/dev/null; then
  swift build -c release --static-swift-stdlib --product vireo 2>&1 | tail -n 1
  bash scripts/testbed-tests.sh --vireo .build/release/vireo || status=1
else
  skipped+=("testbed scenarios: qemu-system-x86_64 is not installed and could not be")
  status=1
fi

if ((${#skipped[@]})); then printf 'skipped: %s\n' "${skipped[@]}"; fi
exit $status
