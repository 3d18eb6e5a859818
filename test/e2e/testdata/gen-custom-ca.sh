#!/usr/bin/env bash
# Creates custom cluster CAs for kpki with the openssl CLI, in the layout of K3s's
# contrib/util/generate-custom-ca-certs.sh:
#
#   root CA          RSA-4096, 20 years, self-signed  (root-ca.pem/.key, reused if present)
#   intermediate CA  RSA-4096, 10 years, signed by the root (intermediate-ca.pem/.key, reused if present)
#   server-ca, client-ca, request-header-ca, etcd/server-ca, etcd/peer-ca
#                    P-256, 10 years, signed by the intermediate;
#                    <ca>.crt = CA + intermediate + root, <ca>.key = "EC PRIVATE KEY"
#   service.key      a new RSA-2048 PKCS#1 key, followed by the previous service.key if any
#
# Output goes to $DATA_DIR/server/tls (DATA_DIR defaults to /var/lib/rancher/kpki). To use an existing
# root, place root-ca.pem and root-ca.key there first; to use an existing root and intermediate,
# place root-ca.pem, intermediate-ca.pem and intermediate-ca.key there first.
set -euo pipefail
umask 077

PRODUCT="${PRODUCT:-kpki}"
DATA_DIR="${DATA_DIR:-/var/lib/rancher/kpki}"
OPENSSL="${OPENSSL:-openssl}"
NOW="$(date +%s)"
TLS_DIR="${DATA_DIR}/server/tls"

if ! "${OPENSSL}" ecparam -name prime256v1 -genkey -noout -out /dev/null >/dev/null 2>&1; then
  echo "${OPENSSL} is missing or has no elliptic-curve support" >&2
  exit 1
fi
# OpenSSL 3 writes PKCS#8 by default; -traditional keeps "RSA PRIVATE KEY" (PKCS#1).
RSA_FLAGS=()
if "${OPENSSL}" version | grep -q '^OpenSSL 3'; then
  RSA_FLAGS=(-traditional)
fi

mkdir -p "${TLS_DIR}/etcd"
cd "${TLS_DIR}"

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

# sign_ca CSR_SUBJECT KEY ISSUER_CERT ISSUER_KEY DAYS OUT
sign_ca() {
  "${OPENSSL}" req -new -key "$2" -subj "$1" -config "${WORK}/openssl.cnf" -out "${WORK}/req.csr"
  "${OPENSSL}" x509 -req -in "${WORK}/req.csr" -CA "$3" -CAkey "$4" -set_serial "$(serial)" \
    -days "$5" -sha256 -extfile "${WORK}/openssl.cnf" -extensions ca_ext -out "$6" 2>/dev/null
}

echo "Generating service-account key service.key"
"${OPENSSL}" genrsa "${RSA_FLAGS[@]}" -out "${WORK}/service.key" 2048 2>/dev/null
if [[ -s service.key ]]; then
  echo "  keeping the previous service-account key(s) after the new one"
  cat service.key >>"${WORK}/service.key"
fi
cat "${WORK}/service.key" >service.key
chmod 600 service.key

if [[ -e root-ca.pem ]]; then
  echo "Using existing root CA root-ca.pem"
else
  echo "Generating root CA root-ca.pem (RSA-4096, 20 years)"
  "${OPENSSL}" genrsa "${RSA_FLAGS[@]}" -out root-ca.key 4096 2>/dev/null
  "${OPENSSL}" req -x509 -new -key root-ca.key -sha256 -days 7300 -set_serial "$(serial)" \
    -subj "/CN=${PRODUCT}-root-ca@${NOW}" -config "${WORK}/openssl.cnf" -extensions ca_ext \
    -out root-ca.pem
fi
cp root-ca.pem root-ca.crt

if [[ -e intermediate-ca.pem ]]; then
  echo "Using existing intermediate CA intermediate-ca.pem"
else
  if [[ ! -e root-ca.key ]]; then
    echo "root-ca.key is needed to create an intermediate CA" >&2
    exit 1
  fi
  echo "Generating intermediate CA intermediate-ca.pem (RSA-4096, 10 years)"
  "${OPENSSL}" genrsa "${RSA_FLAGS[@]}" -out intermediate-ca.key 4096 2>/dev/null
  sign_ca "/CN=${PRODUCT}-intermediate-ca@${NOW}" intermediate-ca.key root-ca.pem root-ca.key 3650 intermediate-ca.pem
fi
if [[ ! -e intermediate-ca.key ]]; then
  echo "intermediate-ca.key is needed to sign the cluster CAs" >&2
  exit 1
fi
cat intermediate-ca.pem root-ca.pem >intermediate-ca.crt

for ca in server client request-header etcd/server etcd/peer; do
  name="${PRODUCT}-${ca//\//-}-ca"
  echo "Generating ${ca}-ca.crt (${name}, P-256, 10 years)"
  "${OPENSSL}" ecparam -name prime256v1 -genkey -noout -out "${ca}-ca.key"
  sign_ca "/CN=${name}@${NOW}" "${ca}-ca.key" intermediate-ca.pem intermediate-ca.key 3650 "${WORK}/ca.pem"
  cat "${WORK}/ca.pem" intermediate-ca.pem root-ca.pem >"${ca}-ca.crt"
done

echo
echo "Custom CA files are in ${TLS_DIR}."
echo "Keep a safe copy of these files and remove them from the cluster nodes:"
for f in root-ca.* intermediate-ca.*; do
  echo "  ${TLS_DIR}/${f}"
done
