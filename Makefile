# discovery-agent: one Makefile for the daemon, agentctl, the two client
# libraries, the man pages and the tests.
#
#   make            build everything into build/ (needs no root, installs nothing)
#   make test       install missing packages, build, run every test (and each
#                   fuzzer for 10 s: see the fuzz section at the end)
#   make fuzz       each fuzzer for FUZZ_SECONDS (300); fuzz/README.md
#   make run        install missing packages, build, run a demo etcd + agent
#   make asan       the tests under AddressSanitizer and UBSan (build-asan/)
#   make bench      the benchmark suite (docs/benchmarks.md)
#   make install    DESTDIR=... PREFIX=/usr/local (and BINDIR, LIBDIR, ...)
#   make uninstall  the same variables: removes what install put in place
#   make deb        Debian packages into build-deb/ (debian/, dh)
#
# Packagers: CFLAGS, CPPFLAGS and LDFLAGS are yours (`make CFLAGS=-O2`);
# the flags the code needs are kept apart in DA_CFLAGS, DA_CPPFLAGS and
# DA_LDFLAGS. WERROR= builds with warnings that do not stop the build.

# The version's one home is the file VERSION: the programs (DA_VERSION),
# the pkg-config files, the installed header and the Debian packages all
# take it from there.
VERSION  := $(shell cat VERSION)

BUILD    ?= build
SAN      ?=
WERROR   ?= -Werror

PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
LIBDIR      ?= $(PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
MANDIR      ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
# The gRPC module (discovery-agent-grpc.so): the daemon looks here unless
# the program's own folder holds one (a build tree) or
# DISCOVERY_AGENT_MODULE_DIR says otherwise (agent/grpc_module.h).
MODULEDIR   ?= $(LIBDIR)/discovery-agent
# The configuration, the unit and the sysusers.d file go where systemd and
# the agent look for them, whatever PREFIX is (DESTDIR still comes first).
SYSCONFDIR  ?= /etc
UNITDIR     ?= /lib/systemd/system
SYSUSERSDIR ?= /usr/lib/sysusers.d

# libknot (Knot DNS) parses and writes the DNS server's messages;
# libmicrohttpd serves the operators' HTTP listener (agent/web/).
PKGS      := libuv libcurl jansson yaml-0.1 libknot libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
JANSSON_LIBS := $(shell pkg-config --libs jansson 2>/dev/null)
GRPC_CFLAGS := $(shell pkg-config --cflags grpc 2>/dev/null)
GRPC_LIBS   := $(shell pkg-config --libs grpc 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)
PROTOBUF_C_CFLAGS := $(shell pkg-config --cflags libprotobuf-c 2>/dev/null)
PROTOBUF_C_LIBS   := $(shell pkg-config --libs libprotobuf-c 2>/dev/null)

CFLAGS   ?= -O2 -g
# snprintf is our bounded copy: truncating into a fixed buffer is intended
# wherever it is used, so GCC's guess that it might truncate is not an error.
DA_CFLAGS   := -std=c11 -D_GNU_SOURCE -fPIC -MMD -MP -Wall -Wextra $(WERROR) \
	-Wno-format-truncation $(SAN)
# -iquote: agent headers are included with quotes, so none of them (check.h,
# say) can shadow a system header of the same name such as Check's <check.h>.
#
# agent/ is flat but for module families with private headers, one folder
# each (agent/etcd/, agent/check/, ...). Every folder is on the quote path,
# so a module's public header is included by its name alone wherever it
# lives; a family's private headers (*_internal.h) are included only by
# the files beside them.
AGENT_DIRS  := agent $(patsubst %/,%,$(sort $(dir $(wildcard agent/*/*.c agent/*/*.h))))
AGENT_IQUOTE := $(AGENT_DIRS:%=-iquote %)
DA_CPPFLAGS := $(AGENT_IQUOTE) -Ilib/include -DDA_VERSION='"$(VERSION)"' $(PKG_CFLAGS)
DA_LDFLAGS  := $(SAN)

COMPILE = $(CC) $(DA_CPPFLAGS) $(CPPFLAGS) $(DA_CFLAGS) $(CFLAGS)
LINK    = $(CC) $(DA_LDFLAGS) $(CFLAGS) $(LDFLAGS)

# The daemon's modules go into one archive that the daemon, agentctl and
# the tests link; main.c and agentctl.c hold the two programs' main().
# agent/grpcmod/ is not among them: it is the gRPC module, below.
AGENT_MAINS := agent/main.c agent/agentctl.c
GRPCMOD_SRC := $(wildcard agent/grpcmod/*.c)
AGENT_SRC   := $(filter-out $(AGENT_MAINS) $(GRPCMOD_SRC),$(wildcard agent/*.c agent/*/*.c))
AGENT_OBJ   := $(AGENT_SRC:%.c=$(BUILD)/%.o)

# The gRPC module: everything of the daemon that uses gRPC C-core (the xDS
# server's gRPC side, grpc health checks), in a shared object that the
# daemon loads with dlopen() on first use (agent/grpc_module.h), so that the
# daemon itself links no gRPC, abseil or libstdc++ and an agent that uses
# neither never maps them (test/check-agent-grpc).
GRPCMOD     := $(BUILD)/discovery-agent-grpc.so
GRPCMOD_OBJ := $(GRPCMOD_SRC:%.c=$(BUILD)/%.o)

# The xDS server's messages: protoc-c turns proto/xds/*.proto into C in
# $(BUILD)/gen, which goes into libagent.a with the modules that use it.
PROTO_SRC   := $(wildcard proto/xds/*.proto)
PROTO_C     := $(PROTO_SRC:proto/xds/%.proto=$(BUILD)/gen/%.pb-c.c)
PROTO_H     := $(PROTO_C:.c=.h)
PROTO_OBJ   := $(PROTO_C:.c=.o)

# Two libraries, each a .a and a .so (libNAME.so.VERSION, with the soname
# link libNAME.so.0 and the link libNAME.so beside it):
#  - libdiscovery: the socket client (lib/*.c but grpc_*.c). It needs
#    jansson and nothing of gRPC: test/check-libdeps holds it to that.
#  - libdiscovery-grpc: the gRPC C-core shim and the server helper
#    (lib/grpc_*.c), linked with libdiscovery and gRPC.
# lib/name.c holds a check that both use and neither exports, so it goes
# into both.
LIB_SOVER   := 0
LIB_SRC     := $(filter-out lib/grpc_%.c,$(wildcard lib/*.c))
LIB_OBJ     := $(LIB_SRC:%.c=$(BUILD)/%.o)
# The one validation module (names, addresses, metadata) is compiled into
# both libraries too: they cannot link agent code, and a client must refuse
# what the agent would refuse. validate.c needs nothing but libc.
LIB_OBJ     += $(BUILD)/lib/validate.o
LIBG_SRC    := $(wildcard lib/grpc_*.c)
LIBG_OBJ    := $(LIBG_SRC:%.c=$(BUILD)/%.o) $(BUILD)/lib/name.o $(BUILD)/lib/validate.o
LIB_NAMES   := libdiscovery libdiscovery-grpc
LIB_A       := $(BUILD)/libdiscovery-grpc.a $(BUILD)/libdiscovery.a
LIB_SO      := $(LIB_NAMES:%=$(BUILD)/%.so.$(VERSION))
LIB_LINKS   := $(LIB_NAMES:%=$(BUILD)/%.so.$(LIB_SOVER)) $(LIB_NAMES:%=$(BUILD)/%.so)
LIBS_OUT    := $(LIB_A) $(LIB_SO) $(LIB_LINKS)

# Example programs (examples/NAME.c -> build/NAME), linked with both
# libraries and gRPC C-core. They are not installed.
EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLES    := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/%)

# Man pages: man/NAME.SECTION.scd -> build/man/NAME.SECTION with scdoc.
MAN_SRC     := $(wildcard man/*.scd)
MAN_PAGES   := $(MAN_SRC:man/%.scd=$(BUILD)/man/%)

HARNESS_SRC := $(wildcard test/harness/*.c)
HARNESS_OBJ := $(HARNESS_SRC:%.c=$(BUILD)/%.o)
TEST_SRC    := $(wildcard test/test_*.c)
TEST_BIN    := $(TEST_SRC:test/%.c=$(BUILD)/test/%)
# Checks of the build's products, run by test/run-tests beside the Check
# binaries; check-deb only under `make test` (it builds the packages).
TEST_SCRIPTS := test/check-libdeps test/check-man test/check-agent-grpc

PROGRAMS :=
ifneq ($(wildcard agent/main.c),)
PROGRAMS += $(BUILD)/discovery-agent
endif
ifneq ($(GRPCMOD_SRC),)
MODULES  := $(GRPCMOD)
endif
ifneq ($(wildcard agent/agentctl.c),)
PROGRAMS += $(BUILD)/agentctl
endif

all: installable $(EXAMPLES) $(TEST_BIN)

# What `make install` installs, and no more: the Debian build makes this.
installable: $(PROGRAMS) $(MODULES) $(LIBS_OUT) $(MAN_PAGES)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(COMPILE) -c $< -o $@

$(BUILD)/test/%.o: DA_CPPFLAGS += -Itest/harness $(CHECK_CFLAGS) -DTEST_DATA_DIR='"$(CURDIR)/test/data"' -DBUILD_DIR='"$(CURDIR)/$(BUILD)"'
$(BUILD)/test/harness/%.o: DA_CPPFLAGS += -Itest/harness $(CHECK_CFLAGS)
$(BUILD)/lib/grpc_%.o: DA_CPPFLAGS += $(GRPC_CFLAGS)
$(BUILD)/agent/grpc_module.o: DA_CPPFLAGS += -DDA_MODULEDIR='"$(MODULEDIR)"'
# Hidden by default: the module exports its one struct and nothing else.
$(GRPCMOD_OBJ): DA_CPPFLAGS += $(GRPC_CFLAGS)
$(GRPCMOD_OBJ): DA_CFLAGS += -fvisibility=hidden
$(BUILD)/lib/validate.o: agent/validate.c
	@mkdir -p $(dir $@)
	$(COMPILE) -c $< -o $@
$(BUILD)/examples/%.o: DA_CPPFLAGS += $(GRPC_CFLAGS)

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/xds/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto/xds $<

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c
	$(COMPILE) $(PROTOBUF_C_CFLAGS) -c $< -o $@

# The status page is written as HTML (agent/web/web_page.html) and served
# from a C string made of it here: each line quoted, backslashes and quotes
# escaped.
WEB_PAGE_H := $(BUILD)/gen/web_page.h
$(WEB_PAGE_H): agent/web/web_page.html
	@mkdir -p $(dir $@)
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $< > $@
$(BUILD)/agent/web/web_page.o: DA_CPPFLAGS += -iquote $(BUILD)/gen
$(BUILD)/agent/web/web_page.o: $(WEB_PAGE_H)

# xds*.c and the tests that include them read the generated headers, which
# must exist before the first compile (-MMD records them after it).
XDS_OBJ := $(filter $(BUILD)/agent/xds%,$(AGENT_OBJ)) $(BUILD)/test/test_xds.o
$(XDS_OBJ): DA_CPPFLAGS += -I$(BUILD)/gen $(PROTOBUF_C_CFLAGS) $(GRPC_CFLAGS)
$(XDS_OBJ): | $(PROTO_H)

$(BUILD)/libagent.a: $(AGENT_OBJ) $(PROTO_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libdiscovery.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libdiscovery-grpc.a: $(LIBG_OBJ)
	@rm -f $@
	ar rcs $@ $^

# -z defs: a library must name every library it takes symbols from.
$(BUILD)/libdiscovery.so.$(VERSION): $(LIB_OBJ)
	$(LINK) -shared -Wl,-soname,libdiscovery.so.$(LIB_SOVER) -Wl,-z,defs \
		$^ $(JANSSON_LIBS) -pthread -o $@

$(BUILD)/libdiscovery-grpc.so.$(VERSION): $(LIBG_OBJ) $(BUILD)/libdiscovery.so
	$(LINK) -shared -Wl,-soname,libdiscovery-grpc.so.$(LIB_SOVER) -Wl,-z,defs \
		$(LIBG_OBJ) -L$(BUILD) -ldiscovery $(GRPC_LIBS) $(JANSSON_LIBS) -pthread -o $@

$(BUILD)/%.so.$(LIB_SOVER): $(BUILD)/%.so.$(VERSION)
	ln -sf $(notdir $<) $@

$(BUILD)/%.so: $(BUILD)/%.so.$(LIB_SOVER)
	ln -sf $(notdir $<) $@

$(BUILD)/%: $(BUILD)/examples/%.o $(LIB_A)
	$(LINK) $^ $(PKG_LIBS) $(GRPC_LIBS) -pthread -o $@

# Neither program links gRPC: the daemon loads the module when it needs
# it, and agentctl never does.
$(BUILD)/discovery-agent: $(BUILD)/agent/main.o $(BUILD)/libagent.a
	$(LINK) $^ $(PKG_LIBS) $(PROTOBUF_C_LIBS) -ldl -pthread -o $@

$(BUILD)/agentctl: $(BUILD)/agent/agentctl.o $(BUILD)/libdiscovery.a $(BUILD)/libagent.a
	$(LINK) $^ $(PKG_LIBS) $(PROTOBUF_C_LIBS) -ldl -pthread -o $@

# -z defs: the module names every library it takes symbols from; it takes
# none from the daemon (the host struct of grpc_module.h lends it logging).
$(GRPCMOD): $(GRPCMOD_OBJ)
	$(LINK) -shared -Wl,-z,defs $^ $(GRPC_LIBS) $(PKG_LIBS) -pthread -o $@

# The tests load the module (in-process grpc checks) or start a daemon
# that does: it must be built first. Some use gRPC themselves.
$(BUILD)/test/%: $(BUILD)/test/%.o $(HARNESS_OBJ) $(BUILD)/libagent.a $(LIB_A) | $(MODULES)
	$(LINK) $(filter-out $(MODULES),$^) $(PKG_LIBS) $(PROTOBUF_C_LIBS) $(GRPC_LIBS) $(CHECK_LIBS) -pthread -o $@

$(BUILD)/man/%: man/%.scd
	@mkdir -p $(dir $@)
	scdoc < $< > $@

# Debian packages the build, the tests and the demo need. `make deps` asks
# dpkg first, so it does nothing (and needs no network) when all are there.
# scdoc writes the man pages; debhelper, devscripts and lintian build and
# check the Debian packages (make deb, test/check-deb). libknot-dev is the
# DNS server's message library; dig (bind9-dnsutils), haproxy and
# dnsmasq-base are the real DNS clients of test/test_dns.c, dnsperf and
# unbound those of the DNS benchmark. libmicrohttpd serves the agent's
# HTTP listener; prometheus (its promtool and server) and chromium
# (headless) check the metrics and the status page in test/test_web.c.
DEB_PKGS := build-essential pkg-config libuv1-dev libcurl4-openssl-dev \
	libjansson-dev libyaml-dev libgrpc-dev check etcd-server etcd-client \
	openssl curl protobuf-c-compiler libprotobuf-c-dev python3-grpcio \
	clang libclang-rt-14-dev gnuplot-nox scdoc debhelper lintian \
	libknot-dev bind9-dnsutils haproxy dnsmasq-base dnsperf unbound \
	libmicrohttpd-dev prometheus chromium

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
	BUILD=$(BUILD) test/run-tests $(TEST_BIN) $(TEST_SCRIPTS) test/check-deb $(FUZZ_QUICK)

asan: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" test-only

test-only: all
	BUILD=$(BUILD) test/run-tests $(TEST_BIN) $(TEST_SCRIPTS)

run: deps
	$(MAKE) all
	test/demo-run $(BUILD)

# ---- install ---------------------------------------------------------------
# The programs, both libraries (with their soname links), the headers, the
# pkg-config files and the man pages under PREFIX; the configuration (never
# over an existing one), the unit and the sysusers.d file that creates the
# unit's user at their fixed places. DESTDIR stages everything for a
# package. The examples are not installed. The .pc files and the header's
# version are written here, so that they name the PREFIX and LIBDIR of this
# install whatever `make` was given.
INSTALLED_BIN  := $(PROGRAMS:$(BUILD)/%=$(BINDIR)/%)
INSTALLED_LIB  := $(foreach l,$(LIB_NAMES),$(LIBDIR)/$(l).a $(LIBDIR)/$(l).so \
	$(LIBDIR)/$(l).so.$(LIB_SOVER) $(LIBDIR)/$(l).so.$(VERSION) $(PKGCONFIGDIR)/$(l).pc)
INSTALLED_HDR  := $(patsubst lib/include/%,$(INCLUDEDIR)/%,$(wildcard lib/include/discovery/*.h))
INSTALLED_MAN  := $(foreach p,$(MAN_PAGES),$(MANDIR)/man$(subst .,,$(suffix $(p)))/$(notdir $(p)))
INSTALLED_SYS  := $(UNITDIR)/discovery-agent.service $(UNITDIR)/discovery-agent.socket \
                  $(SYSUSERSDIR)/discovery-agent.conf
INSTALLED_MOD  := $(MODULES:$(BUILD)/%=$(MODULEDIR)/%)

install: installable
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) \
		$(DESTDIR)$(INCLUDEDIR)/discovery $(DESTDIR)$(SYSCONFDIR)/discovery-agent/conf.d \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(MODULEDIR) \
		$(addprefix $(DESTDIR)$(MANDIR)/man,1 5 8)
	install -m 755 $(PROGRAMS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(MODULES) $(DESTDIR)$(MODULEDIR)/
	set -e; for l in $(LIB_NAMES); do \
		install -m 644 $(BUILD)/$$l.a $(BUILD)/$$l.so.$(VERSION) $(DESTDIR)$(LIBDIR)/; \
		ln -sf $$l.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$$l.so.$(LIB_SOVER); \
		ln -sf $$l.so.$(LIB_SOVER) $(DESTDIR)$(LIBDIR)/$$l.so; \
		sed -e 's#@PREFIX@#$(PREFIX)#g' -e 's#@LIBDIR@#$(LIBDIR)#g' \
			-e 's#@INCLUDEDIR@#$(INCLUDEDIR)#g' -e 's#@VERSION@#$(VERSION)#g' \
			lib/$$l.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/$$l.pc; \
		chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/$$l.pc; \
	done
	install -m 644 lib/include/discovery/*.h $(DESTDIR)$(INCLUDEDIR)/discovery/
	sed -i 's#^\#define DISC_VERSION DA_VERSION$$#\#define DISC_VERSION "$(VERSION)"#' \
		$(DESTDIR)$(INCLUDEDIR)/discovery/discovery.h
	set -e; for p in $(MAN_PAGES); do \
		s=$${p##*.}; install -m 644 $$p $(DESTDIR)$(MANDIR)/man$$s/; \
	done
	test -e $(DESTDIR)$(SYSCONFDIR)/discovery-agent/agent.yaml || \
		install -m 644 conf/agent.yaml $(DESTDIR)$(SYSCONFDIR)/discovery-agent/agent.yaml
	sed 's#/usr/local/bin#$(BINDIR)#g' systemd/discovery-agent.service > \
		$(DESTDIR)$(UNITDIR)/discovery-agent.service
	chmod 644 $(DESTDIR)$(UNITDIR)/discovery-agent.service
	install -m 644 systemd/discovery-agent.socket $(DESTDIR)$(UNITDIR)/discovery-agent.socket
	install -m 644 systemd/discovery-agent.sysusers $(DESTDIR)$(SYSUSERSDIR)/discovery-agent.conf

# Removes what install put in place, but never the configuration: that is
# the operator's (remove /etc/discovery-agent by hand), as a package's
# conffiles outlive its removal. Neither is the user removed.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED_BIN) $(INSTALLED_LIB) $(INSTALLED_HDR) \
		$(INSTALLED_MAN) $(INSTALLED_SYS) $(INSTALLED_MOD))
	-rmdir $(DESTDIR)$(INCLUDEDIR)/discovery $(DESTDIR)$(MODULEDIR)

# ---- deb -------------------------------------------------------------------
# Debian packages (debian/): discovery-agent (daemon, agentctl, man pages,
# configuration, unit, user), libdiscovery0, libdiscovery-grpc0 and
# libdiscovery-dev. The sources are copied into build-deb/src, where
# debian/changelog is written with the version of VERSION, and built there
# with dpkg-buildpackage: build/ is left alone, and the packages come from
# a clean tree. The .deb files land in build-deb/.
DEB_DIR   := build-deb
DEB_FILES := Makefile VERSION agent lib conf systemd man proto debian

deb:
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/src
	tar -cf - $(DEB_FILES) | tar -xf - -C $(DEB_DIR)/src
	sed -e 's#@VERSION@#$(VERSION)#g' -e "s#@DATE@#$$(date -R)#g" \
		debian/changelog.in > $(DEB_DIR)/src/debian/changelog
	rm $(DEB_DIR)/src/debian/changelog.in
	cd $(DEB_DIR)/src && DEB_BUILD_OPTIONS="nocheck parallel=$${DEB_JOBS:-2} $$DEB_BUILD_OPTIONS" \
		dpkg-buildpackage -b -us -uc
	@ls $(DEB_DIR)/*.deb

lintian: deb
	lintian --tag-display-limit 0 $(DEB_DIR)/*.changes

clean:
	rm -rf build build-asan $(DEB_DIR)

.PHONY: all installable deps test asan test-only run install uninstall deb lintian clean
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
FUZZ_CPPFLAGS  := $(AGENT_IQUOTE) -Ilib/include -I$(FUZZ_BUILD)/gen -DDA_VERSION='"$(VERSION)"' $(PKG_CFLAGS) $(PROTOBUF_C_CFLAGS) $(GRPC_CFLAGS)
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

$(FUZZ_BUILD)/gen/web_page.h: agent/web/web_page.html
	@mkdir -p $(dir $@)
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$$/\\n"/' $< > $@
$(FUZZ_BUILD)/agent/web/web_page.o: $(FUZZ_BUILD)/gen/web_page.h

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
#   BENCH_ONLY=resolve,propagation,grpc,scale,dns   run only these parts
#   BENCH_PERF=DIR    perf record the agent during each part, into DIR

BENCH_SRC     := $(wildcard bench/*.c)
BENCH_OBJ     := $(BENCH_SRC:%.c=$(BUILD)/%.o)
BENCH_HARNESS := $(addprefix $(BUILD)/test/harness/,proc.o etcd_proc.o agentproc.o testutil.o)
# The bench is no client of libagent.a, but makes its folders and writes
# base64 as the agent does.
BENCH_AGENT   := $(BUILD)/agent/mkdir_p.o $(BUILD)/agent/etcd/b64.o

$(BENCH_OBJ): DA_CPPFLAGS += -Itest/harness $(GRPC_CFLAGS) -DBUILD_DIR='"$(CURDIR)/$(BUILD)"'

$(BUILD)/bench/bench: $(BENCH_OBJ) $(BENCH_HARNESS) $(BENCH_AGENT) $(LIB_A)
	$(LINK) $^ $(PKG_LIBS) $(GRPC_LIBS) -lm -pthread -o $@

bench: deps
	$(MAKE) $(BUILD)/discovery-agent $(GRPCMOD) $(BUILD)/echo-server $(BUILD)/bench/bench
	$(BUILD)/bench/bench --out docs/benchmarks.md --data $(BUILD)/bench --notes bench/notes.md
	gnuplot -e "datadir='$(BUILD)/bench'; outdir='docs'" bench/plots.gp

.PHONY: bench

# The fleet benchmark (issue 14; bench/fleet/): a 3-member cluster and
# FLEET agents (default 1,000), plain then TLS; each run writes
# $(BUILD)/bench/fleet-N.dat, and bench/fleet/report turns every such file
# there into docs/scaling.md and its plots. FLEET_TLS=0 skips the TLS half.
FLEET        ?= 1000
FLEET_SRC    := $(wildcard bench/fleet/*.c)
FLEET_OBJ    := $(FLEET_SRC:%.c=$(BUILD)/%.o)
FLEET_SHARED := $(addprefix $(BUILD)/bench/,util.o gw.o procstat.o lines.o)

$(FLEET_OBJ): DA_CPPFLAGS += -Ibench -Itest/harness -DBUILD_DIR='"$(CURDIR)/$(BUILD)"'

$(BUILD)/bench/fleet/fleet: $(FLEET_OBJ) $(FLEET_SHARED) $(BENCH_HARNESS) $(BENCH_AGENT)
	$(LINK) $^ $(PKG_LIBS) -lm -pthread -o $@

bench-fleet: deps
	$(MAKE) $(BUILD)/discovery-agent $(BUILD)/bench/fleet/fleet
	FLEET=$(FLEET) $(BUILD)/bench/fleet/fleet $(BUILD)/bench
	bench/fleet/report $(BUILD)/bench docs

.PHONY: bench-fleet

# No file of the build is an intermediate that make may delete once the
# program is linked: a second `make` must find every object and rebuild
# nothing. (A bare .SECONDARY: would do, but the fuzz section names its
# own, and any name turns the bare form off.)
.SECONDARY: $(EXAMPLE_SRC:%.c=$(BUILD)/%.o) $(TEST_SRC:%.c=$(BUILD)/%.o) $(HARNESS_OBJ) \
	$(PROTO_C) $(PROTO_H) $(BENCH_OBJ) $(GRPCMOD_OBJ) $(FLEET_OBJ)

# The project's style (.clang-format) applied to every C file git tracks;
# clang-format is Debian's (clang-format-14). Not part of the build.
format:
	clang-format -i $$(git ls-files '*.c' '*.h')

.PHONY: format
