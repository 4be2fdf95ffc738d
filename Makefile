# ShadowServe: the user-facing commands. CMake does the building; this file only names the
# builds and what runs in each. See README.md.
#
#   make demo       build (release) and run the end-to-end demo on an embedded default
#   make test       install missing Debian packages, build with asserts, run every test
#   make bench      build (release) and run the benchmarks; figures go to stdout and build-release/bench/
#   make sanitize   the tests again under ASan+UBSan and under TSan
#   make fuzz       short libFuzzer runs of every fuzz target (FUZZ_SECONDS each, default 30)
#   make install    install libshadow, headers and tools (PREFIX, default /usr/local)

JOBS         ?= $(shell nproc)
PREFIX       ?= /usr/local
FUZZ_SECONDS ?= 30
# CI builds treat warnings as errors; a user's build only shows them.
WERROR       ?= $(if $(CI),ON,OFF)
CTEST        = ctest --output-on-failure --timeout 600 -j$(JOBS)
# TSan needs the old, non-randomized mmap layout on kernels with high ASLR entropy.
NOASLR       = setarch $$(uname -m) -R

.PHONY: all deps build release test demo bench sanitize asan tsan fuzz install clean

all: build

deps:
	@scripts/deps.sh

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHADOW_TESTING=ON -DSHADOW_WERROR=$(WERROR)
	cmake --build build -j$(JOBS)

release: deps
	cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DSHADOW_BUILD_TESTS=OFF \
	      -DCMAKE_INSTALL_PREFIX=$(PREFIX) -DSHADOW_WERROR=$(WERROR)
	cmake --build build-release -j$(JOBS)

test: build
	cd build && $(CTEST)

demo: release
	build-release/tools/shadowctl/shadowctl demo

bench: release
	scripts/bench.sh build-release

asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSHADOW_TESTING=ON -DSHADOW_CUDA=OFF \
	      -DSHADOW_SANITIZE=address,undefined -DSHADOW_WERROR=$(WERROR)
	cmake --build build-asan -j$(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $(CTEST)

# The benchmarks' smoke runs are left out of TSan: there they run 20-50x slower (minutes each
# on two cores) and only repeat what test_pipeline and test_shadowd exercise with threads;
# ASan runs them.
tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHADOW_TESTING=ON \
	      -DSHADOW_CUDA=OFF -DSHADOW_SANITIZE=thread -DSHADOW_WERROR=$(WERROR)
	cmake --build build-tsan -j$(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 $(NOASLR) \
	      $(CTEST) -LE bench-smoke

sanitize: asan tsan

fuzz:
	@scripts/deps.sh fuzz
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHADOW_TESTING=ON \
	      -DSHADOW_CUDA=OFF -DSHADOW_FUZZ=ON -DSHADOW_BUILD_TESTS=OFF \
	      -DSHADOW_SANITIZE=address,undefined -DSHADOW_WERROR=$(WERROR)
	cmake --build build-fuzz -j$(JOBS)
	scripts/fuzz.sh build-fuzz $(FUZZ_SECONDS)

install: release
	cmake --install build-release

clean:
	rm -rf build build-release build-asan build-tsan build-fuzz
