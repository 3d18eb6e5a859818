#!/usr/bin/env bash
# Stages new cluster CAs cross-signed by the current self-signed ones, with the openssl CLI,
# the way K3s's contrib/util/rotate-default-ca-certs.sh does:
#
#   for each of client, server, request-header, etcd/peer, etcd/server:
#     current root  = $DATA_DIR/server/tls/<ca>.crt/.key when the .crt holds one certificate;
#                     its second certificate and second key when it holds more (the files of an
#                     earlier cross-signing)
#     new root      P-256, 20 years, CN ${PRODUCT}-<ca>-root@<now>: self-signed, and the same
#                   subject and key cross-signed by the current root
#     new CA        P-256, 20 years, CN ${PRODUCT}-<ca>-ca@<now>, signed by the new root
#     <ca>.crt      = new CA + new root (self-signed) + new root (cross-signed) + current root
#     <ca>.key      = new CA key + new root key ("EC PRIVATE KEY")
#   service.key     = a new RSA-2048 PKCS#1 key + the current $DATA_DIR/server/tls/service.key
#
# Output goes to $DATA_DIR/server/rotate-ca/tls (DATA_DIR defaults to /var/lib/rancher/kpki). Like the
# K3s script, the working files (<ca>-root-old.pem/.key, <ca>-root.key, <ca>-root-ssigned.pem,
# <ca>-root-xsigned.pem, <ca>-ca.pem) are left next to the output, and an existing directory is
# written over, not emptied. Prints the server and agent tokens with the new CA hash — the
# SHA-256 of the new self-signed server root's DER, the hash K3s and kpki compute for a CA
# bundle (the K3s script prints the fingerprint of the new server CA certificate instead) —
# and the rotate-ca command to run.
set -euo pipefail
umask 077

PRODUCT="${PRODUCT:-kpki}"
DATA_DIR="${DATA_DIR:-/var/lib/rancher/kpki}"
OPENSSL="${OPENSSL:-openssl}"
NOW="$(date +%s)"
TLS_DIR="${DATA_DIR}/server/tls"
OUT_DIR="${DATA_DIR}/server/rotate-ca"

if ! "${OPENSSL}" ecparam -name prime256v1 -genkey -noout -out /dev/null >/dev/null 2>&1; then
  echo "${OPENSSL} is missing or has no elliptic-curve support" >&2
  exit 1
fi
# OpenSSL 3 writes PKCS#8 by default; -traditional keeps "RSA PRIVATE KEY" (PKCS#1).
RSA_FLAGS=()
if "${OPENSSL}" version | grep -q '^OpenSSL 3'; then
  RSA_FLAGS=(-traditional)
fi

for f in server/token server/agent-token server/tls/service.key; do
  if [[ ! -f "${DATA_DIR}/${f}" ]]; then
    echo "${DATA_DIR}/${f} does not exist; cannot continue" >&2
    exit 1
  fi
done

mkdir -p "${OUT_DIR}/tls/etcd"
cd "${OUT_DIR}/tls"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
cat >"${WORK}/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

serial() {
  echo "0x1$("${OPENSSL}" rand -hex 15)"
}

# nth_block FILE TYPE N: print the N-th PEM block of type TYPE in FILE.
nth_block() {
  awk -v begin="-----BEGIN $2-----" -v end="-----END $2-----" -v want="$3" '
    $0 == begin { n++; on = (n == want) }
    on { print }
    $0 == end { on = 0 }
  ' "$1"
}

# sign_ca SUBJECT KEY ISSUER_CERT ISSUER_KEY DAYS OUT
sign_ca() {
  "${OPENSSL}" req -new -key "$2" -subj "$1" -config "${WORK}/openssl.cnf" -out "${WORK}/req.csr"
  "${OPENSSL}" x509 -req -in "${WORK}/req.csr" -CA "$3" -CAkey "$4" -set_serial "$(serial)" \
    -days "$5" -sha256 -extfile "${WORK}/openssl.cnf" -extensions ca_ext -out "$6" 2>/dev/null
}

for ca in client server request-header etcd/peer etcd/server; do
  crt="${TLS_DIR}/${ca}-ca.crt"
  key="${TLS_DIR}/${ca}-ca.key"
  if [[ ! -f "${crt}" || ! -f "${key}" ]]; then
    echo "Current ${ca} CA ${crt} or its key does not exist; cannot continue" >&2
    exit 1
  fi
  if (( $(grep -c -- '-----BEGIN CERTIFICATE-----' "${crt}") > 1 )); then
    nth_block "${crt}" CERTIFICATE 2 >"${ca}-root-old.pem"
    nth_block "${key}" "EC PRIVATE KEY" 2 >"${ca}-root-old.key"
    if [[ ! -s "${ca}-root-old.key" ]]; then
      echo "${crt} holds a chain but ${key} has no second key; not from an earlier cross-signing" >&2
      exit 1
    fi
  else
    cat "${crt}" >"${ca}-root-old.pem"
    cat "${key}" >"${ca}-root-old.key"
  fi

  name="${PRODUCT}-${ca//\//-}"
  echo "Generating ${name}-root root and cross-signed certificate authority key and certificates"
  "${OPENSSL}" ecparam -name prime256v1 -genkey -noout -out "${ca}-root.key"
  "${OPENSSL}" req -x509 -new -key "${ca}-root.key" -sha256 -days 7300 -set_serial "$(serial)" \
    -subj "/CN=${name}-root@${NOW}" -config "${WORK}/openssl.cnf" -extensions ca_ext \
    -out "${ca}-root-ssigned.pem"
  sign_ca "/CN=${name}-root@${NOW}" "${ca}-root.key" "${ca}-root-old.pem" "${ca}-root-old.key" 7300 "${ca}-root-xsigned.pem"

  echo "Generating ${name}-ca intermediate certificate authority key and certificate"
  "${OPENSSL}" ecparam -name prime256v1 -genkey -noout -out "${ca}-ca.key"
  sign_ca "/CN=${name}-ca@${NOW}" "${ca}-ca.key" "${ca}-root-ssigned.pem" "${ca}-root.key" 7300 "${ca}-ca.pem"

  cat "${ca}-ca.pem" "${ca}-root-ssigned.pem" "${ca}-root-xsigned.pem" "${ca}-root-old.pem" >"${ca}-ca.crt"
  cat "${ca}-root.key" >>"${ca}-ca.key"
done

"${OPENSSL}" genrsa "${RSA_FLAGS[@]}" -out "${WORK}/service.key" 2048 2>/dev/null
cat "${TLS_DIR}/service.key" >>"${WORK}/service.key"
cat "${WORK}/service.key" >service.key

HASH="$("${OPENSSL}" x509 -noout -fingerprint -sha256 -in server-root-ssigned.pem | sed -e 's/^.*=//' -e 's/://g' | tr 'A-F' 'a-f')"
token_with_hash() {
  local t
  t="$(tr -d '[:space:]' <"$1")"
  if [[ "${t}" == K10*::* ]]; then
    t="${t#*::}"
  else
    t="$2:${t}"
  fi
  echo "K10${HASH}::${t}"
}

echo
echo "Cross-signed CA certs and keys now available in ${OUT_DIR}"
echo "Updated server token:    $(token_with_hash "${DATA_DIR}/server/token" server)"
echo "Updated agent token:     $(token_with_hash "${DATA_DIR}/server/agent-token" node)"
echo
echo "To update certificates, you may now run:"
echo "    ${PRODUCT} certificate rotate-ca --path=${OUT_DIR}"
