# The two commands of the README, plus the benchmark. Each installs what is missing first.
.PHONY: deps demo test bench lint format install

PREFIX ?= /usr/local

deps:
	bash scripts/install-deps.sh

demo: deps
	bash scripts/demo.sh

test: deps
	swift build --build-tests $$(bash scripts/plan.sh)
	swift test

# A release binary with the Swift runtime linked in, man pages, completions;
# first the packages the build needs (libunwind-dev, libdw-dev), if missing.
install:
	bash scripts/install-deps.sh build
	bash scripts/install.sh $(PREFIX)

bench:
	bash scripts/install-deps.sh bench
	bash scripts/bench.sh $(ARGS)

# swift-format ships with the Swift toolchain; .swift-format is the style.
SWIFT_SOURCES = Sources Tests fixtures Package.swift

lint:
	swift format lint --strict --recursive $(SWIFT_SOURCES)

format:
	swift format format --in-place --recursive $(SWIFT_SOURCES)
