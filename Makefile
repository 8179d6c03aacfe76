# The two commands of the README, plus the benchmark. Each installs what is missing first.
.PHONY: deps demo test bench

deps:
	bash scripts/install-deps.sh

demo: deps
	bash scripts/demo.sh

test: deps
	swift build --build-tests
	swift test

bench:
	bash scripts/install-deps.sh bench
	bash scripts/bench.sh $(ARGS)
