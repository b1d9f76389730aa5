#!/usr/bin/env bash
# make demo: a relay and a simulated agent on 127.0.0.1, a demo device and
# client key, and the curl lines that call the device. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
ADDR=${TETHER_DEMO_ADDR:-127.0.0.1:8080}
DATA=${TETHER_DEMO_DATA:-demo-data}
DEVICE=demo-pi

mkdir -p "$DATA"
if [ ! -f "$DATA/demo.token" ]; then
  "$BIN/tether-relay" device add "$DEVICE" --data "$DATA" | tail -n 1 > "$DATA/demo.token"
  "$BIN/tether-relay" client add demo --data "$DATA" | tail -n 1 > "$DATA/demo.key"
fi
KEY=$(cat "$DATA/demo.key")

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# fail NAME LOG: the demo did not come up; say why and stop.
fail() {
  echo "tether demo: $1; the end of $2:" >&2
  tail -n 5 "$2" >&2
  exit 1
}

"$BIN/tether-relay" serve --listen "$ADDR" --data "$DATA" 2>"$DATA/relay.log" &
pids+=($!)
up=
for _ in $(seq 50); do curl -fs "http://$ADDR/healthz" >/dev/null 2>&1 && up=1 && break; sleep 0.1; done
[ -n "$up" ] || fail "the relay did not start on $ADDR (if the port is taken: TETHER_DEMO_ADDR=127.0.0.1:PORT make demo)" "$DATA/relay.log"
"$BIN/tether-agent" --relay "ws://$ADDR" --token-file "$DATA/demo.token" --board mock \
  --state "$DATA/agent" 2>"$DATA/agent.log" &
pids+=($!)
up=
for _ in $(seq 50); do
  curl -fs -H "Authorization: Bearer $KEY" "http://$ADDR/v1/devices/$DEVICE" | grep -q '"online":true' && up=1 && break
  sleep 0.1
done
[ -n "$up" ] || fail "the simulated agent did not connect" "$DATA/agent.log"

cat <<MSG

tether demo is running: relay on http://$ADDR, simulated Raspberry Pi "$DEVICE" connected.
Dashboard: http://$ADDR/ (sign in with the key below)
Logs: $DATA/relay.log and $DATA/agent.log.   Stop with Ctrl-C.

  export TETHER_KEY=$KEY

  # list devices
  curl -s -H "Authorization: Bearer \$TETHER_KEY" http://$ADDR/v1/devices

  # ping the device through the whole request path and wait for the answer
  curl -s -H "Authorization: Bearer \$TETHER_KEY" -d '{"method":"sys.ping","params":{"hello":"pi"}}' \\
       "http://$ADDR/v1/devices/$DEVICE/requests?wait=10s"

  # drive GPIO17 high (it is wired to GPIO27 on the simulated board), then read GPIO27
  curl -s -H "Authorization: Bearer \$TETHER_KEY" -d '{"method":"gpio.write","params":{"pin":"GPIO17","level":"high"}}' \\
       "http://$ADDR/v1/devices/$DEVICE/requests?wait=10s"
  curl -s -H "Authorization: Bearer \$TETHER_KEY" -d '{"method":"gpio.read","params":{"pin":"GPIO27"}}' \\
       "http://$ADDR/v1/devices/$DEVICE/requests?wait=10s"

  # the same with the CLI (key=value sends a string, key:=JSON a number or object)
  $BIN/tether --relay http://$ADDR call $DEVICE sys.info
  $BIN/tether --relay http://$ADDR call $DEVICE i2c.tx bus=1 addr:=0x48 write=00 read:=2
  $BIN/tether --relay http://$ADDR watch $DEVICE

MSG
wait -n "${pids[@]}"
