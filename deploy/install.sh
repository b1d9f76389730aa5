#!/bin/sh
# install.sh: put tether-agent on a board without a package: the binary,
# /etc/tether/agent.yaml and the init integration (systemd unit and/or SysV
# init script), then create the tether user and start the service.
#
#   make cross
#   deploy/install.sh --host pi@raspberrypi.local --binary dist/tether-agent-linux-armv6 \
#       --relay wss://relay.example.com --token-file pi-kitchen.token
#   sudo deploy/install.sh --binary dist/tether-agent-linux-arm64        # on the board itself
#   deploy/install.sh --root /tmp/rootfs --binary dist/tether-agent-linux-armv6   # an image or a test
#
# --host copies this directory's files and the binary over one ssh
# connection (tar through the pipe) and runs this script on the board, with
# sudo unless it logs in as root. Into a --root other than "/" files are
# only copied: no user, no service, nothing started.
#
# Options:
#   --binary FILE      agent binary to install (required), e.g. dist/tether-agent-linux-armv6
#   --host [USER@]HOST install on that board over ssh ($SSH, default ssh; $SSH_OPTS)
#   --root DIR         install below DIR instead of / (on the board, with --host)
#   --prefix DIR       binary goes to PREFIX/bin (default /usr/local)
#   --config FILE      config to install instead of the commented template; an
#                      existing /etc/tether/agent.yaml is kept unless --force-config
#   --force-config     replace an existing config
#   --relay URL        set relay: in a newly installed template config
#   --token-file FILE  install FILE as /etc/tether/token (mode 0600, owner tether)
#   --init KIND        systemd, sysv, both, none or auto (default: systemd when it
#                      runs the target, else sysv; both into a --root)
#   --no-start         install and enable, but do not (re)start the agent
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
NAME=tether-agent

die() {
	printf 'install.sh: %s\n' "$*" >&2
	exit 1
}
say() { printf '%s\n' "$*"; }

# q quotes one word for a remote shell.
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

BINARY= HOST= ROOT=/ PREFIX=/usr/local CONFIG= FORCE_CONFIG= RELAY= TOKEN_FILE= INIT=auto START=yes
while [ $# -gt 0 ]; do
	case $1 in
	--binary) BINARY=${2:?--binary needs a file}; shift ;;
	--host) HOST=${2:?--host needs a destination}; shift ;;
	--root) ROOT=${2:?--root needs a directory}; shift ;;
	--prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
	--config) CONFIG=${2:?--config needs a file}; shift ;;
	--force-config) FORCE_CONFIG=yes ;;
	--relay) RELAY=${2:?--relay needs a URL}; shift ;;
	--token-file) TOKEN_FILE=${2:?--token-file needs a file}; shift ;;
	--init) INIT=${2:?--init needs systemd, sysv, both, none or auto}; shift ;;
	--no-start) START= ;;
	-h | --help)
		sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done
[ -n "$BINARY" ] || die "--binary is required (build one with: make cross)"
[ -f "$BINARY" ] || die "$BINARY: no such file"
case $INIT in systemd | sysv | both | none | auto) ;; *) die "--init: want systemd, sysv, both, none or auto" ;; esac
case $PREFIX in /*) ;; *) die "--prefix must be absolute" ;; esac
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "$CONFIG: no such file"
[ -z "$TOKEN_FILE" ] || [ -f "$TOKEN_FILE" ] || die "$TOKEN_FILE: no such file"

# ---- remote: ship everything in one tar stream, run this script there ----
if [ -n "$HOST" ]; then
	stage=$(mktemp -d)
	trap 'rm -rf "$stage"' EXIT INT TERM
	mkdir -p "$stage/init.d" "$stage/systemd" "$stage/packaging"
	cp "$HERE/install.sh" "$stage/"
	cp "$HERE/init.d/$NAME" "$stage/init.d/"
	cp "$HERE/systemd/$NAME.service" "$stage/systemd/"
	cp "$HERE/packaging/agent.yaml" "$stage/packaging/"
	cp "$BINARY" "$stage/$NAME"
	set -- --binary '"$d"'/$NAME --root "$(q "$ROOT")" --prefix "$(q "$PREFIX")" --init "$INIT"
	if [ -n "$CONFIG" ]; then cp "$CONFIG" "$stage/agent.yaml"; set -- "$@" --config '"$d"'/agent.yaml; fi
	if [ -n "$TOKEN_FILE" ]; then cp "$TOKEN_FILE" "$stage/token"; set -- "$@" --token-file '"$d"'/token; fi
	[ -z "$RELAY" ] || set -- "$@" --relay "$(q "$RELAY")"
	[ -z "$FORCE_CONFIG" ] || set -- "$@" --force-config
	[ -n "$START" ] || set -- "$@" --no-start
	case $HOST in root@*) sudo_default= ;; *) sudo_default=sudo ;; esac
	SUDO=${SUDO-$sudo_default}
	remote="set -e; d=\$(mktemp -d); trap 'rm -rf \"\$d\"' EXIT; tar -C \"\$d\" -xf -; $SUDO sh \"\$d\"/install.sh $*"
	say "installing on $HOST ..."
	# shellcheck disable=SC2086
	tar -C "$stage" -cf - . | ${SSH:-ssh} ${SSH_OPTS:-} "$HOST" "$remote"
	exit 0
fi

# ---- local: copy the files below ROOT ----
R=${ROOT%/}
if [ "$INIT" = auto ]; then
	if [ -n "$R" ]; then
		INIT=both
	elif [ -d /run/systemd/system ]; then
		INIT=systemd
	else
		INIT=sysv
	fi
fi

# put SRC DST MODE copies through a temporary name and renames, so that a
# running binary is replaced rather than written over.
put() {
	mkdir -p "$(dirname "$2")"
	cp "$1" "$2.new.$$"
	chmod "$3" "$2.new.$$"
	mv -f "$2.new.$$" "$2"
}

BIN=$R$PREFIX/bin/$NAME
put "$BINARY" "$BIN" 0755
say "binary   $BIN"

CONF=$R/etc/tether/agent.yaml
if [ -f "$CONF" ] && [ -z "$FORCE_CONFIG" ]; then
	say "config   $CONF (kept; --force-config replaces it)"
	[ -z "$RELAY" ] || say "warning: --relay ignored, the existing config is kept"
else
	put "${CONFIG:-$HERE/packaging/agent.yaml}" "$CONF" 0644
	if [ -n "$RELAY" ]; then
		url=$(printf '%s' "$RELAY" | sed 's/[|&\\]/\\&/g')
		sed "s|^#relay: .*|relay: $url|" "$CONF" >"$CONF.new.$$" && mv -f "$CONF.new.$$" "$CONF"
		grep -q "^relay: " "$CONF" || printf 'relay: %s\n' "$RELAY" >>"$CONF"
	fi
	say "config   $CONF"
fi
if [ -n "$TOKEN_FILE" ]; then
	put "$TOKEN_FILE" "$R/etc/tether/token" 0600
	say "token    $R/etc/tether/token"
fi
mkdir -p "$R/var/lib/tether"

case $INIT in systemd | both)
	UNIT=$R/etc/systemd/system/$NAME.service
	mkdir -p "$(dirname "$UNIT")"
	sed "s|/usr/bin/$NAME|$PREFIX/bin/$NAME|g" "$HERE/systemd/$NAME.service" >"$UNIT.new.$$"
	chmod 0644 "$UNIT.new.$$" && mv -f "$UNIT.new.$$" "$UNIT"
	say "systemd  $UNIT"
	;;
esac
case $INIT in sysv | both)
	SCRIPT=$R/etc/init.d/$NAME
	mkdir -p "$(dirname "$SCRIPT")"
	sed "s|^DAEMON=\${DAEMON:-\$TETHER_ROOT/usr/bin/\$NAME}|DAEMON=\${DAEMON:-\$TETHER_ROOT$PREFIX/bin/\$NAME}|" \
		"$HERE/init.d/$NAME" >"$SCRIPT.new.$$"
	chmod 0755 "$SCRIPT.new.$$" && mv -f "$SCRIPT.new.$$" "$SCRIPT"
	say "sysv     $SCRIPT"
	;;
esac

if [ -n "$R" ]; then
	say "installed below $ROOT: no user created, nothing enabled or started."
	say "In the image (its chroot, or at first boot), as root: create the system user tether"
	say "(groups gpio, i2c, spi), then: chown tether:tether /var/lib/tether /etc/tether/token;"
	say "chmod 0750 /var/lib/tether; chgrp tether /etc/tether; chmod 1775 /etc/tether"
	say "(the agent must own its token to rotate it), and enable $NAME."
	exit 0
fi

# ---- activate on this machine ----
[ "$(id -u)" -eq 0 ] || die "run as root to create the tether user and enable the service (or use --root DIR)"
for g in gpio i2c spi; do
	getent group "$g" >/dev/null 2>&1 && continue
	groupadd --system "$g" 2>/dev/null || addgroup -S "$g" 2>/dev/null || addgroup --system "$g"
done
if ! getent passwd tether >/dev/null 2>&1; then
	useradd --system --user-group --home-dir /var/lib/tether --no-create-home --shell /usr/sbin/nologin tether 2>/dev/null ||
		adduser -S -D -H -h /var/lib/tether -s /sbin/nologin tether 2>/dev/null ||
		adduser --system --group --home /var/lib/tether --no-create-home tether
	getent group tether >/dev/null 2>&1 || addgroup -S tether 2>/dev/null || true
fi
for g in gpio i2c spi; do
	id -nG tether | tr ' ' '\n' | grep -qx "$g" && continue
	usermod -a -G "$g" tether 2>/dev/null || addgroup tether "$g" 2>/dev/null || adduser tether "$g"
done
chown tether:tether /var/lib/tether && chmod 0750 /var/lib/tether
# Token rotation renames a new token over /etc/tether/token: the directory
# is group-writable with the sticky bit, so the agent can replace the
# token, which it owns, and no other file there.
chgrp tether /etc/tether && chmod 1775 /etc/tether
[ ! -f /etc/tether/token ] || { chown tether:tether /etc/tether/token && chmod 0600 /etc/tether/token; }

configured=
grep -Eq '^relay:[[:space:]]*[^[:space:]#]' "$CONF" && configured=yes
mode=$INIT
[ "$mode" = both ] && { [ -d /run/systemd/system ] && mode=systemd || mode=sysv; }
case $mode in
systemd)
	systemctl daemon-reload
	systemctl enable "$NAME.service"
	[ -n "$START" ] && [ -n "$configured" ] && systemctl restart "$NAME.service"
	;;
sysv)
	if command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d "$NAME" defaults
	elif command -v chkconfig >/dev/null 2>&1; then
		chkconfig --add "$NAME"
	elif [ -f /etc/init.d/rcS ]; then
		# BusyBox/Buildroot rcS runs /etc/init.d/S??* in order.
		ln -sf "$NAME" "/etc/init.d/S95$NAME"
	fi
	[ -n "$START" ] && [ -n "$configured" ] && "/etc/init.d/$NAME" restart
	;;
esac
if [ -z "$configured" ]; then
	say "set relay: in $CONF and the token in /etc/tether/token, then start the agent"
fi
say "check the setup with: $BIN check --config /etc/tether/agent.yaml"
