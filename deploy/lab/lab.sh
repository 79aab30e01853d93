#!/usr/bin/env bash
# The govnet lab: a 3-node controller cluster and four agency gateways, each
# in its own network namespace (each controller with its own SoftHSM2 token
# and intermediate), joined by a transport bridge that lives in a namespace
# of its own. Nothing is configured in the host's namespace; every address
# exists only inside the lab.
#
#   deploy/lab/lab.sh up      build nothing; start the lab from bin/ and show the flow matrix
#   deploy/lab/lab.sh down    remove every namespace, interface, socket, process and file it made
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LAB=${GOVNET_LAB_DIR:-$ROOT/.lab}
BIN=$ROOT/bin
P=gvlab-                       # namespace prefix
NET=${P}net                    # namespace holding the transport bridge
CTL=${P}ctl1                   # namespace govnetctl runs in
CTL_IP=192.0.2.1               # TEST-NET-1: documentation addresses, lab only
API=https://$CTL_IP:7443
# controller node | address (each in namespace $P<node>)
CONTROLLERS=(
  "ctl1|192.0.2.1"
  "ctl2|192.0.2.2"
  "ctl3|192.0.2.3"
)
PIN=1234

# gateway id | agency code | transport address | WireGuard interface
GATEWAYS=(
  "gw-h29|000.00.00.H29|192.0.2.11|gvl-h29"
  "gw-h29c|000.12.04.H29|192.0.2.12|gvl-h29c"
  "gw-h49|000.00.00.H49|192.0.2.13|gvl-h49"
  "gw-g22|000.00.00.G22|192.0.2.14|gvl-g22"
)
# code | name (parents first)
AGENCIES=(
  "000.00.00.G22|Văn phòng Chính phủ"
  "000.00.00.H29|Ủy ban nhân dân tỉnh Quảng Ninh"
  "000.00.04.H29|Ủy ban nhân dân thành phố Hạ Long"
  "000.12.04.H29|Ủy ban nhân dân phường Hồng Gai"
  "000.00.00.H49|Ủy ban nhân dân tỉnh Quảng Nam"
)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
ctl() { nsx "$CTL" "$BIN/govnetctl" --config "$LAB/govnetctl-$1.yaml" "${@:2}"; }
request_id() { sed -n 's/^ *"id": *"\([0-9a-f]*\)".*/\1/p' | head -1; }

down() {
  # Processes first (by pid file, then anything still in a lab namespace).
  if [ -d "$LAB/run" ]; then
    for f in "$LAB"/run/*.pid; do
      [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  sleep 0.5
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns"
  done
  rm -f /var/run/wireguard/gvl-*.sock
  rm -rf "$LAB"
}

wait_for() { # seconds description command...
  local secs=$1 what=$2; shift 2
  for _ in $(seq $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  return 1
}

start() { # name namespace command... (logs to $LAB/logs/name.log)
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" "$@" >"$LAB/logs/$name.log" 2>&1 &
  echo $! >"$LAB/run/$name.pid"
}

up() {
  for b in govnetd govnet-agent govnetctl labtool; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run make build" >&2; exit 1; }
  done
  down
  mkdir -p "$LAB"/{logs,run,tokens,people,hsm}
  chmod 700 "$LAB"

  say "network: bridge in $NET, ${#CONTROLLERS[@]} controllers and ${#GATEWAYS[@]} gateways in their own namespaces"
  ip netns add "$NET"
  nsx "$NET" ip link add br0 type bridge
  nsx "$NET" ip link set br0 up
  nsx "$NET" ip link set lo up
  local i=0
  attach() { # ns address
    local ns=$1 addr=$2 host=vl$i
    i=$((i + 1))
    ip netns add "$ns"
    ip link add "$host" netns "$NET" type veth peer name eth0 netns "$ns"
    nsx "$NET" ip link set "$host" master br0 up
    nsx "$ns" ip link set lo up
    nsx "$ns" ip addr add "$addr/24" dev eth0
    nsx "$ns" ip link set eth0 up
  }
  for c in "${CONTROLLERS[@]}"; do
    IFS='|' read -r node addr <<<"$c"
    attach "$P$node" "$addr"
  done
  for g in "${GATEWAYS[@]}"; do
    IFS='|' read -r id _ addr _ <<<"$g"
    attach "$P$id" "$addr"
  done

  say "HSM: one SoftHSM2 token per controller (config $LAB/hsm/softhsm2.conf)"
  export SOFTHSM2_CONF=$LAB/hsm/softhsm2.conf
  mkdir -p "$LAB/hsm/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$LAB/hsm/tokens" >"$SOFTHSM2_CONF"
  for c in "${CONTROLLERS[@]}"; do
    IFS='|' read -r node _ <<<"$c"
    softhsm2-util --init-token --free --label "govnet-ca-$node" --so-pin 0000 --pin "$PIN" >/dev/null
  done
  echo "$PIN" >"$LAB/hsm/pin"
  chmod 600 "$LAB/hsm/pin"

  say "Cipher Committee: the root key ceremony, in its own token, 2-of-3 custodians (an, binh, cuong)"
  softhsm2-util --init-token --free --label govnet-root --so-pin "$PIN" --pin unused-0000 >/dev/null
  "$BIN/govnetd" ceremony init --root-token govnet-root --so-pin-file "$LAB/hsm/pin" \
    --custodians an,binh,cuong --threshold 2 --out "$LAB/ceremony" --operator officer1
  share() { echo "$LAB/ceremony/shares/$1.share"; }
  local root_id # the root's key id names its CRL, which every controller serves
  root_id=$(openssl x509 -in "$LAB/ceremony/root.pem" -noout -ext subjectKeyIdentifier | tail -1 | tr -d ' :' | tr 'A-F' 'a-f')

  for c in "${CONTROLLERS[@]}"; do
    IFS='|' read -r node addr <<<"$c"
    if [ "$node" = ctl1 ]; then
      say "controllers: ctl1 founds the cluster: intermediate and TLS keys in its own token, a CSR for the custodians"
      nsx "$CTL" "$BIN/govnetd" init --external-root --config "$LAB/govnetd-ctl1.yaml" --node ctl1 --data-dir "$LAB/ctl1" \
        --api-addr "$CTL_IP:7443" --raft-addr "$CTL_IP:7000" --overlay-prefix 100.64.0.0/24 \
        --hsm-token govnet-ca-ctl1 --hsm-pin-file "$LAB/hsm/pin" --hsm-pin-env "" --four-eyes \
        --person operator1:operator --person officer1:officer --person auditor1:auditor --people-dir "$LAB/people" \
        --csr-out "$LAB/ctl1.csr" >/dev/null
      say "root operation with one share of a 2-of-3 root: refused (and audited)"
      "$BIN/govnetd" ceremony sign-intermediate --ceremony-dir "$LAB/ceremony" --shares "$(share binh)" \
        --csr "$LAB/ctl1.csr" --out "$LAB/ctl1.refused.pem" --actor officer1 2>&1 | grep -v '^audit:' | sed 's/^/    /' || true
      [ ! -e "$LAB/ctl1.refused.pem" ] || { echo "one share signed an intermediate" >&2; exit 1; }
    else
      say "controllers: $node joins: keys in its own token, a CSR for the custodians"
      local joinaddr=()
      [ "$node" = ctl3 ] && joinaddr=(--join-addr "$CTL_IP:7443") # ctl3 asks to be added; ctl2 is added by an operator
      nsx "$P$node" "$BIN/govnetd" init --join --config "$LAB/govnetd-$node.yaml" --node "$node" --data-dir "$LAB/$node" \
        --api-addr "$addr:7443" --raft-addr "$addr:7000" --overlay-prefix 100.64.0.0/24 \
        --hsm-token "govnet-ca-$node" --hsm-pin-file "$LAB/hsm/pin" --hsm-pin-env "" --four-eyes \
        "${joinaddr[@]}" --csr-out "$LAB/$node.csr" >/dev/null
    fi
    say "custodians an and cuong open the root with their shares and sign $node's intermediate"
    "$BIN/govnetd" ceremony sign-intermediate --ceremony-dir "$LAB/ceremony" --shares "$(share an),$(share cuong)" \
      --csr "$LAB/$node.csr" --node "$node" --out "$LAB/$node.bundle.pem" --actor officer1 \
      --root-crl-url "http://$CTL_IP:7444/crl/$root_id.crl" 2>>"$LAB/logs/ceremony.log" |
      sed 's/^/    /' || { cat "$LAB/logs/ceremony.log" >&2; exit 1; }
    nsx "$P$node" "$BIN/govnetd" finish-join --config "$LAB/govnetd-$node.yaml" --bundle "$LAB/$node.bundle.pem" >/dev/null
  done
  for who in operator1 officer1 auditor1; do
    cat >"$LAB/govnetctl-${who%1}.yaml" <<YAML
controller: $API
root: $LAB/ctl1/pki/root.pem
cert: $LAB/people/$who.crt
key: $LAB/people/$who.key
YAML
  done
  start govnetd-ctl1 "$CTL" "$BIN/govnetd" run --config "$LAB/govnetd-ctl1.yaml"
  wait_for 30 "the controller's API" ctl operator agency list
  ctl operator cluster status --wait 30s >/dev/null
  for c in "${CONTROLLERS[@]:1}"; do
    IFS='|' read -r node _ <<<"$c"
    start "govnetd-$node" "$P$node" "$BIN/govnetd" run --config "$LAB/govnetd-$node.yaml"
  done
  wait_for 30 "an operator to add ctl2" ctl operator cluster join ctl2 192.0.2.2:7000 192.0.2.2:7443
  voters() { [ "$(ctl operator cluster status -o json | grep -c '"suffrage": "voter"')" -eq ${#CONTROLLERS[@]} ]; }
  wait_for 60 "${#CONTROLLERS[@]} voters" voters
  ctl operator cluster status

  say "custodians binh and cuong sign the root's CRL (no intermediate revoked yet); an officer publishes it"
  "$BIN/govnetd" ceremony crl --ceremony-dir "$LAB/ceremony" --shares "$(share binh),$(share cuong)" \
    --out "$LAB/root.crl" --actor officer1 2>>"$LAB/logs/ceremony.log" | sed 's/^/    /'
  ctl officer cert publish-root-crl "$LAB/root.crl"

  say "registry: agencies and gateways (operator); enrollment tokens requested (operator) and approved (officer)"
  for a in "${AGENCIES[@]}"; do
    IFS='|' read -r code name <<<"$a"
    ctl operator agency add "$code" --name "$name" >/dev/null
  done
  for g in "${GATEWAYS[@]}"; do
    IFS='|' read -r id code addr _ <<<"$g"
    ctl operator gateway add "$id" --agency "$code" --endpoint "$addr:51820" >/dev/null
    req=$(ctl operator request token "$id" --ttl 15m -o json | request_id)
    ctl officer request approve "$req" --write "$LAB/tokens/$id" >/dev/null
  done
  ctl operator agency list

  say "gateways: govnet-agent enroll, then run, each inside its namespace, spread over the controllers"
  local k=0 all=() c
  for c in "${CONTROLLERS[@]}"; do all+=("https://${c#*|}:7443"); done
  all=$(IFS=,; echo "${all[*]}")
  for g in "${GATEWAYS[@]}"; do
    IFS='|' read -r id _ addr ifc <<<"$g"
    local caddr
    IFS='|' read -r _ caddr <<<"${CONTROLLERS[$((k % ${#CONTROLLERS[@]}))]}"
    k=$((k + 1))
    nsx "$P$id" "$BIN/govnet-agent" enroll --config "$LAB/$id/agent.yaml" --controller "https://$caddr:7443" \
      --controllers "$all" \
      --root "$LAB/ctl1/pki/root.pem" --token-file "$LAB/tokens/$id" --state-dir "$LAB/$id/state" \
      --interface "$ifc" --listen-port 51820 --endpoint "$addr:51820" --reconcile 5s
    start "agent-$id" "$P$id" "$BIN/govnet-agent" run --config "$LAB/$id/agent.yaml"
    start "listen-$id" "$P$id" "$BIN/labtool" listen 22 443 8080
  done

  say "policy: deploy/lab/policy.yaml checked offline, proposed (operator), approved and published (officer)"
  ctl operator registry export >"$LAB/registry.json"
  ctl operator policy check "$ROOT/deploy/lab/policy.yaml" --registry "$LAB/registry.json"
  req=$(ctl operator policy propose "$ROOT/deploy/lab/policy.yaml" -o json | request_id)
  ctl officer policy approve "$req"
  ctl officer request list
  local version
  version=$(ctl officer policy show -o json | sed -n 's/.*"version": *\([0-9]*\).*/\1/p' | head -1)
  applied() {
    ctl operator gateway list -o json >"$LAB/gateways.json" || return 1
    [ "$(grep -c "\"policy_version\": $version," "$LAB/gateways.json")" -eq ${#GATEWAYS[@]} ]
  }
  wait_for 60 "every gateway to report policy v$version" applied
  handshakes() { # every peer of every gateway has completed a WireGuard handshake
    local g id ifc
    for g in "${GATEWAYS[@]}"; do
      IFS='|' read -r id _ _ ifc <<<"$g"
      nsx "$P$id" wg show "$ifc" latest-handshakes | awk '$2 == 0 { bad = 1 } END { exit bad }' || return 1
    done
  }
  wait_for 30 "WireGuard handshakes between all peers" handshakes
  ctl operator agency list -o json >"$LAB/agencies.json"
  ctl operator gateway list

  say "officer: every gateway renews its certificate now, on its controller stream (govnetctl cert renew-all)"
  ctl officer cert renew-all --reason "lab: re-issue the network's certificates"
  renewed() {
    ctl operator cert renew-all --status -o json >"$LAB/renew.json" || return 1
    grep -Eq '"pending": 0($|,)' "$LAB/renew.json"
  }
  wait_for 60 "every gateway to renew its certificate" renewed
  ctl operator cert renew-all --status

  say "flows over the overlay: expected by policy vs observed with real TCP connections"
  "$BIN/labtool" matrix --policy "$ROOT/deploy/lab/policy.yaml" --agencies "$LAB/agencies.json" \
    --gateways "$LAB/gateways.json" --ports 22,443,8080 --ns-prefix "$P" --timeout 2s

  say "auditor: the certificate inventory, each certificate's approval (renewals back to their enrollment), and the audit chain verified offline against the ceremony's root"
  ctl auditor cert list
  ctl auditor cert audit
  ctl auditor audit export --out "$LAB/audit.jsonl" --checkpoint "$LAB/audit.checkpoint.json"
  ctl auditor audit verify "$LAB/audit.jsonl" --checkpoint "$LAB/audit.checkpoint.json" | tee "$LAB/audit.verify"
  # The checkpoint's signer (and its intermediate, when the root's CRL is
  # published) against their issuers' CRLs, from the URLs the NOT CHECKED
  # lines name (those in the certificates).
  crls=()
  n=0
  for url in $(sed -n 's/.*NOT CHECKED: .* CRL (\(http[^ )]*\))$/\1/p' "$LAB/audit.verify"); do
    n=$((n + 1))
    if nsx "$CTL" curl -sfo "$LAB/signer-$n.crl" "$url"; then
      crls+=(--crl "$LAB/signer-$n.crl")
    else
      echo "lab: no CRL at $url (not published)"
    fi
  done
  ctl auditor audit verify "$LAB/audit.jsonl" --checkpoint "$LAB/audit.checkpoint.json" "${crls[@]}"

  say "auditor: a backup of the replicated state, signed by the node that saved it and checked offline; a copy with one agency renamed is refused"
  ctl auditor cluster snapshot save "$LAB/backup.snap"
  ctl auditor cluster snapshot verify "$LAB/backup.snap"
  sed '0,/Quảng Ninh/s//Quảng Minh/' "$LAB/backup.snap" > "$LAB/backup-altered.snap"
  if cmp -s "$LAB/backup.snap" "$LAB/backup-altered.snap" || ctl auditor cluster snapshot verify "$LAB/backup-altered.snap"; then
    echo "lab: the altered backup was not refused" >&2
    exit 1
  fi

  cat <<EOT

The lab stays up. Explore it:
  ip netns list                                           # the lab's namespaces ($P*)
  ip netns exec ${P}gw-h29c ping -c1 100.64.0.4            # commune -> Government Office (ICMP to NDXP: allowed)
  ip netns exec ${P}gw-h29 wg show gvl-h29                 # WireGuard peers and handshakes
  ip netns exec ${P}gw-h29 nft list table inet govnet      # the ruleset the agent applied
  ip netns exec $CTL $BIN/govnetctl --config $LAB/govnetctl-operator.yaml gateway list
  ip netns exec $CTL $BIN/govnetctl --config $LAB/govnetctl-operator.yaml cluster status
State:
  controllers' data, certificates $LAB/ctl1, ctl2, ctl3   (root: $LAB/ctl1/pki/root.pem)
  root key ceremony               $LAB/ceremony (transcript, root.pem; custodians' shares in shares/)
  SoftHSM2 tokens                 SOFTHSM2_CONF=$LAB/hsm/softhsm2.conf  (node tokens' PIN in $LAB/hsm/pin;
                                  the root token govnet-root opens only with 2 of the 3 shares)
  people's credentials            $LAB/people
  gateway state (keys, certs)     $LAB/<gateway>/state
  logs                            $LAB/logs
govnetctl from the host: the controller listens only inside the lab, at $API, so run it in the
controller's namespace as above, with the config $LAB/govnetctl-operator.yaml (or -officer.yaml, -auditor.yaml).
Tear down: make demo-down
EOT
}

case ${1:-} in
  up) up ;;
  down) down; echo "lab removed" ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
