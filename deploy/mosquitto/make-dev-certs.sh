#!/usr/bin/env bash
# Development PKI for the mosquitto TLS listener: a CA, a server certificate and, optionally,
# client certificates for mutual TLS. NOT for production (unprotected keys, long validity).
#
#   deploy/mosquitto/make-dev-certs.sh OUT_DIR [--host NAME_OR_IP]... [--client NAME]...
#
# The server certificate always names localhost and 127.0.0.1 (and ::1); add the broker's real
# host names with --host. Writes OUT_DIR/{ca.crt,ca.key,server.crt,server.key} and
# OUT_DIR/<client>.{crt,key}. An existing CA in OUT_DIR is reused, so certificates can be added.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
hosts=(localhost 127.0.0.1 ::1)
clients=()
while [ $# -gt 0 ]; do
    case $1 in
        --host) hosts+=("$2"); shift 2 ;;
        --client) clients+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
days=${DAYS:-825}
mkdir -p "$out"
umask 077
cd "$out"

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$days" \
        -keyout ca.key -out ca.crt -subj "/O=ecg-monitor dev/CN=ecg-monitor dev CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

san=""
for h in "${hosts[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}

# sign NAME CN EXTENSIONS: NAME.key + NAME.crt signed by the CA
sign() {
    local name=$1 cn=$2 ext=$3
    openssl req -new -nodes -newkey rsa:2048 -keyout "$name.key" -out "$name.csr" \
        -subj "/O=ecg-monitor dev/CN=$cn" 2>/dev/null
    printf '%s\n' "$ext" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$name.crt" -days "$days" -sha256 -extfile "$name.ext" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

sign server "${hosts[3]:-localhost}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"

for c in "${clients[@]}"; do
    sign "$c" "$c" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
done

# Certificates are public; keys stay private (chown server.key to the mosquitto user).
chmod 644 ca.crt server.crt
for c in "${clients[@]}"; do chmod 644 "$c.crt"; done
echo "wrote $(pwd): ca.crt server.crt server.key${clients:+ ${clients[*]/%/.crt}} (SAN $san)"
