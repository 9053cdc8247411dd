# discovery-agent: one Makefile for the daemon, agentctl, libdiscovery and tests.
#
#   make          build everything into build/
#   make test     install missing packages, build, run every test (and each
#                 fuzzer for 10 s: see the fuzz section at the end)
#   make fuzz     each fuzzer for FUZZ_SECONDS (300); fuzz/README.md
#   make run      install missing packages, build, run a demo etcd + agent
#   make asan     the tests under AddressSanitizer and UBSan (build-asan/)
#   make install  DESTDIR=... PREFIX=/usr/local

CC       ?= cc
BUILD    ?= build
PREFIX   ?= /usr/local
SAN      ?=

PKGS      := libuv libcurl jansson yaml-0.1
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
GRPC_CFLAGS := $(shell pkg-config --cflags grpc 2>/dev/null)
GRPC_LIBS   := $(shell pkg-config --libs grpc 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)
PROTOBUF_C_CFLAGS := $(shell pkg-config --cflags libprotobuf-c 2>/dev/null)
PROTOBUF_C_LIBS   := $(shell pkg-config --libs libprotobuf-c 2>/dev/null)

CFLAGS   ?= -O2 -g
# snprintf is our bounded copy: truncating into a fixed buffer is intended
# wherever it is used, so GCC's guess that it might truncate is not an error.
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-format-truncation \
	-MMD -MP -fPIC $(SAN)
# -iquote: agent headers are included with quotes, so none of them (check.h,
# say) can shadow a system header of the same name such as Check's <check.h>.
CPPFLAGS += -iquote agent -Ilib/include $(PKG_CFLAGS)
LDFLAGS  += $(SAN)

# The daemon's modules go into one archive that the daemon, agentctl and
# the tests link; main.c and agentctl.c hold the two programs' main().
AGENT_MAINS := agent/main.c agent/agentctl.c
AGENT_SRC   := $(filter-out $(AGENT_MAINS),$(wildcard agent/*.c))
AGENT_OBJ   := $(AGENT_SRC:%.c=$(BUILD)/%.o)

# The xDS server's messages: protoc-c turns proto/xds/*.proto into C in
# $(BUILD)/gen, which goes into libagent.a with the modules that use it.
PROTO_SRC   := $(wildcard proto/xds/*.proto)
PROTO_C     := $(PROTO_SRC:proto/xds/%.proto=$(BUILD)/gen/%.pb-c.c)
PROTO_H     := $(PROTO_C:.c=.h)
PROTO_OBJ   := $(PROTO_C:.c=.o)

# libdiscovery: the socket client library applications link (lib/*.c).
LIB_SRC     := $(wildcard lib/*.c)
LIB_OBJ     := $(LIB_SRC:%.c=$(BUILD)/%.o)
# The one validation module (names, addresses, metadata) is compiled into
# the library too: it cannot link agent code, and a client must refuse
# what the agent would refuse. validate.c needs nothing but libc.
LIB_OBJ     += $(BUILD)/lib/validate.o
LIB_SONAME  := libdiscovery.so.0
LIBS_OUT    :=
ifneq ($(LIB_SRC),)
LIBS_OUT    += $(BUILD)/libdiscovery.a $(BUILD)/libdiscovery.so $(BUILD)/libdiscovery.pc
endif

# Example programs (examples/NAME.c -> build/NAME), linked with
# libdiscovery and gRPC C-core.
EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLES    := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/%)

HARNESS_SRC := $(wildcard test/harness/*.c)
HARNESS_OBJ := $(HARNESS_SRC:%.c=$(BUILD)/%.o)
TEST_SRC    := $(wildcard test/test_*.c)
TEST_BIN    := $(TEST_SRC:test/%.c=$(BUILD)/test/%)

PROGRAMS :=
ifneq ($(wildcard agent/main.c),)
PROGRAMS += $(BUILD)/discovery-agent
endif
ifneq ($(wildcard agent/agentctl.c),)
PROGRAMS += $(BUILD)/agentctl
endif

all: $(LIBS_OUT) $(PROGRAMS) $(EXAMPLES) $(TEST_BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/test/%.o: CPPFLAGS += -Itest/harness $(CHECK_CFLAGS) -DTEST_DATA_DIR='"$(CURDIR)/test/data"' -DBUILD_DIR='"$(CURDIR)/$(BUILD)"'
$(BUILD)/test/harness/%.o: CPPFLAGS += -Itest/harness $(CHECK_CFLAGS)
$(BUILD)/lib/%.o: CPPFLAGS += $(GRPC_CFLAGS)
$(BUILD)/lib/validate.o: agent/validate.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@
$(BUILD)/examples/%.o: CPPFLAGS += $(GRPC_CFLAGS)

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/xds/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto/xds $<

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(CC) $(CPPFLAGS) $(PROTOBUF_C_CFLAGS) $(CFLAGS) -c $< -o $@

# xds*.c and the tests that include them read the generated headers, which
# must exist before the first compile (-MMD records them after it).
XDS_OBJ := $(filter $(BUILD)/agent/xds%,$(AGENT_OBJ)) $(BUILD)/test/test_xds.o
$(XDS_OBJ): CPPFLAGS += -I$(BUILD)/gen $(PROTOBUF_C_CFLAGS) $(GRPC_CFLAGS)
$(XDS_OBJ): | $(PROTO_H)

$(BUILD)/libagent.a: $(AGENT_OBJ) $(PROTO_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libdiscovery.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libdiscovery.so: $(LIB_OBJ)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(LIB_SONAME) $^ $(PKG_LIBS) $(GRPC_LIBS) -pthread -o $@

$(BUILD)/%: $(BUILD)/examples/%.o $(BUILD)/libdiscovery.a
	$(CC) $(LDFLAGS) $^ $(PKG_LIBS) $(GRPC_LIBS) -pthread -o $@

$(BUILD)/libdiscovery.pc: lib/libdiscovery.pc.in
	sed -e 's#@PREFIX@#$(PREFIX)#g' -e 's#@VERSION@#0.1.0#g' $< > $@

$(BUILD)/discovery-agent: $(BUILD)/agent/main.o $(BUILD)/libagent.a
	$(CC) $(LDFLAGS) $^ $(PKG_LIBS) $(PROTOBUF_C_LIBS) $(GRPC_LIBS) -pthread -o $@

$(BUILD)/agentctl: $(BUILD)/agent/agentctl.o $(BUILD)/libdiscovery.a $(BUILD)/libagent.a
	$(CC) $(LDFLAGS) $^ $(PKG_LIBS) $(PROTOBUF_C_LIBS) $(GRPC_LIBS) -pthread -o $@

$(BUILD)/test/%: $(BUILD)/test/%.o $(HARNESS_OBJ) $(BUILD)/libagent.a $(filter %.a,$(LIBS_OUT))
	$(CC) $(LDFLAGS) $^ $(PKG_LIBS) $(PROTOBUF_C_LIBS) $(GRPC_LIBS) $(CHECK_LIBS) -pthread -o $@

# Debian packages the build, the tests and the demo need. `make deps` asks
# dpkg first, so it does nothing (and needs no network) when all are there.
DEB_PKGS := build-essential pkg-config libuv1-dev libcurl4-openssl-dev \
	libjansson-dev libyaml-dev libgrpc-dev check etcd-server etcd-client \
	openssl curl protobuf-c-compiler libprotobuf-c-dev python3-grpcio \
	clang libclang-rt-14-dev gnuplot-nox

deps:
	@missing=$$(for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "make deps: installing" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install:" $$missing >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Each test binary is a Check runner; the script runs them in order and
# prints one summary line at the end.
test: deps
	$(MAKE) all fuzz-build
	BUILD=$(BUILD) test/run-tests $(TEST_BIN) $(FUZZ_QUICK)

asan: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" test-only

test-only: all
	BUILD=$(BUILD) test/run-tests $(TEST_BIN)

run: deps
	$(MAKE) all
	test/demo-run $(BUILD)

# Binaries, library, headers and pkg-config file under PREFIX; the example
# configuration (never over an existing one) and the unit at their fixed
# places. DESTDIR stages everything for a package.
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
		$(DESTDIR)$(PREFIX)/include/discovery \
		$(DESTDIR)/etc/discovery-agent/conf.d $(DESTDIR)/lib/systemd/system
	install -m 755 $(PROGRAMS) $(EXAMPLES) $(DESTDIR)$(PREFIX)/bin/
	if [ -n "$(LIBS_OUT)" ]; then \
		install -m 644 $(BUILD)/libdiscovery.a $(DESTDIR)$(PREFIX)/lib/ && \
		install -m 755 $(BUILD)/libdiscovery.so $(DESTDIR)$(PREFIX)/lib/$(LIB_SONAME) && \
		ln -sf $(LIB_SONAME) $(DESTDIR)$(PREFIX)/lib/libdiscovery.so && \
		install -m 644 lib/include/discovery/*.h $(DESTDIR)$(PREFIX)/include/discovery/ && \
		install -m 644 $(BUILD)/libdiscovery.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/; \
	fi
	test -e $(DESTDIR)/etc/discovery-agent/agent.yaml || \
		install -m 644 conf/agent.yaml $(DESTDIR)/etc/discovery-agent/agent.yaml
	sed 's#/usr/local#$(PREFIX)#g' systemd/discovery-agent.service > \
		$(DESTDIR)/lib/systemd/system/discovery-agent.service
	chmod 644 $(DESTDIR)/lib/systemd/system/discovery-agent.service

clean:
	rm -rf build build-asan

.PHONY: all deps test asan test-only run install clean
.DELETE_ON_ERROR:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- fuzz ------------------------------------------------------------------
# libFuzzer targets for the parsers that read outside bytes (fuzz/*.c; see
# fuzz/README.md). They are built with clang, ASan and UBSan into
# build-fuzz/ from the agent's sources, compiled again with coverage
# instrumentation: the gcc objects of build/ have none.
#
#   make fuzz         each target FUZZ_SECONDS (300); new inputs are added
#                     to fuzz/corpus/TARGET (make -j2 fuzz runs two at once)
#   make fuzz-quick   each target 10 s, after replaying fuzz/regressions/;
#                     `make test` runs it with the unit tests

FUZZ_CC        ?= clang
FUZZ_BUILD     := build-fuzz
FUZZ_SECONDS   ?= 300
FUZZ_SAN       := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
# The agent's sources get the warnings but not -Werror here: gcc's build
# holds them to that, and a warning only clang gives must not stop the
# fuzzers. The fuzzers' own files get -Werror.
FUZZ_CFLAGS    := -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -MMD -MP $(FUZZ_SAN) \
	-fsanitize=fuzzer-no-link
FUZZ_CPPFLAGS  := -iquote agent -I$(FUZZ_BUILD)/gen $(PKG_CFLAGS) $(PROTOBUF_C_CFLAGS) $(GRPC_CFLAGS)
FUZZ_LIBS      := -Wl,--as-needed $(PKG_LIBS) $(PROTOBUF_C_LIBS) $(GRPC_LIBS) -pthread

FUZZ_TARGETS   := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_BIN       := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)
FUZZ_AGENT_OBJ := $(AGENT_SRC:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_PROTO_C   := $(PROTO_SRC:proto/xds/%.proto=$(FUZZ_BUILD)/gen/%.pb-c.c)
FUZZ_PROTO_OBJ := $(FUZZ_PROTO_C:.c=.o)
# One tiny script per target, so that test/run-tests counts each quick
# fuzzing run as one test in its closing "N passed, N failed" line.
FUZZ_QUICK     := $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/quick/%)

$(FUZZ_BUILD)/.gitignore:
	@mkdir -p $(FUZZ_BUILD)
	echo '*' > $@

$(FUZZ_BUILD)/gen/%.pb-c.c $(FUZZ_BUILD)/gen/%.pb-c.h: proto/xds/%.proto
	@mkdir -p $(FUZZ_BUILD)/gen
	protoc-c --c_out=$(FUZZ_BUILD)/gen -Iproto/xds $<

$(FUZZ_BUILD)/gen/%.o: $(FUZZ_BUILD)/gen/%.c
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -c $< -o $@

# Generated headers first: some agent files include them.
$(FUZZ_BUILD)/agent/%.o: agent/%.c | $(FUZZ_PROTO_C:.c=.h) $(FUZZ_BUILD)/.gitignore
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -c $< -o $@

$(FUZZ_BUILD)/fuzz/%.o: fuzz/%.c | $(FUZZ_PROTO_C:.c=.h) $(FUZZ_BUILD)/.gitignore
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CPPFLAGS) $(FUZZ_CFLAGS) -Werror -c $< -o $@

# An archive: each target pulls in only the modules it needs.
$(FUZZ_BUILD)/libagent.a: $(FUZZ_AGENT_OBJ) $(FUZZ_PROTO_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/fuzz/fuzz_%.o $(FUZZ_BUILD)/libagent.a
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ $(FUZZ_LIBS) -o $@

$(FUZZ_BUILD)/quick/%: | $(FUZZ_BUILD)/.gitignore
	@mkdir -p $(dir $@)
	printf '#!/bin/sh\nexec fuzz/run quick %s\n' $* > $@
	chmod +x $@

# Keep what make would otherwise delete as intermediate.
.SECONDARY: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz/%.o) $(FUZZ_PROTO_C) $(FUZZ_PROTO_C:.c=.h)

fuzz-build: $(FUZZ_BIN) $(FUZZ_QUICK)

fuzz-quick: fuzz-build
	test/run-tests $(FUZZ_QUICK)

fuzz: $(FUZZ_TARGETS:%=fuzz-run-%)

# A static pattern rule: make looks for no implicit rule for a .PHONY target.
$(FUZZ_TARGETS:%=fuzz-run-%): fuzz-run-%: $(FUZZ_BUILD)/%
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run long $*

fuzz-clean:
	rm -rf $(FUZZ_BUILD)

clean: fuzz-clean

.PHONY: fuzz fuzz-build fuzz-quick fuzz-clean $(FUZZ_TARGETS:%=fuzz-run-%)

-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)

# ---- bench -----------------------------------------------------------------
# The benchmark suite (bench/*.c, issue 7): real etcd, real agents, each
# figure beside its floor. `make bench` builds it, runs it (under ten
# minutes on 2 cores), and writes docs/benchmarks.md and docs/*.png with
# gnuplot. Nothing in `make test` runs it: benchmarks assert no time.
#
#   BENCH_ONLY=resolve,propagation,grpc,scale   run only these parts
#   BENCH_PERF=DIR    perf record the agent during each part, into DIR

BENCH_SRC     := $(wildcard bench/*.c)
BENCH_OBJ     := $(BENCH_SRC:%.c=$(BUILD)/%.o)
BENCH_HARNESS := $(addprefix $(BUILD)/test/harness/,proc.o etcd_proc.o agentproc.o)

$(BENCH_OBJ): CPPFLAGS += -Itest/harness $(GRPC_CFLAGS) -DBUILD_DIR='"$(CURDIR)/$(BUILD)"'

$(BUILD)/bench/bench: $(BENCH_OBJ) $(BENCH_HARNESS) $(BUILD)/libdiscovery.a
	$(CC) $(LDFLAGS) $^ $(PKG_LIBS) $(GRPC_LIBS) -lm -pthread -o $@

bench: deps
	$(MAKE) $(BUILD)/discovery-agent $(BUILD)/echo-server $(BUILD)/bench/bench
	$(BUILD)/bench/bench --out docs/benchmarks.md --data $(BUILD)/bench --notes bench/notes.md
	gnuplot -e "datadir='$(BUILD)/bench'; outdir='docs'" bench/plots.gp

.PHONY: bench
