#!/bin/sh
# Makes what docker-compose.sasl.yml mounts, in deploy/sasl/secrets/ (git ignores it):
#   ca.pem                  a throwaway CA: the broker's trust anchor for the stack's clients
#   kafka.p12               the broker's key and certificate (for the host names kafka and localhost)
#   keystore-password       the password of kafka.p12 (and of its key)
#   kafka_server_jaas.conf  the broker's SASL login module (SCRAM; it holds no password)
#   stream-lstm-password    the SCRAM-SHA-512 password of the user stream-lstm
# Needs only openssl. The CA's key is deleted once the broker's certificate is signed: run the
# script again (after deleting the folder) to start over. The files are readable by every user of
# this machine, because the containers (apache/kafka runs as uid 1000, stream-lstm as 10001) read
# them through bind mounts: fine for this local stack, not for a real deployment.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
if [ -e "$dir" ]; then
    echo "$dir exists already; delete it to make new secrets" >&2
    exit 1
fi
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -new -nodes -newkey rsa:2048 -days 365 -subj "/CN=stream-lstm compose CA" \
    -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -new -nodes -newkey rsa:2048 -subj "/CN=kafka" -keyout kafka-key.pem -out kafka.csr 2>/dev/null
printf 'subjectAltName=DNS:kafka,DNS:localhost\n' > kafka.ext
openssl x509 -req -in kafka.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
    -extfile kafka.ext -out kafka.pem 2>/dev/null
keystore_password=$(openssl rand -hex 16)
printf '%s' "$keystore_password" > keystore-password
openssl pkcs12 -export -in kafka.pem -inkey kafka-key.pem -name kafka \
    -passout "pass:$keystore_password" -out kafka.p12
# Hex only: the password goes into kafka-configs' SCRAM-SHA-512=[password=...] unquoted.
openssl rand -hex 16 > stream-lstm-password
cat > kafka_server_jaas.conf <<'JAAS'
KafkaServer {
  org.apache.kafka.common.security.scram.ScramLoginModule required;
};
JAAS
rm -f ca-key.pem ca.srl kafka-key.pem kafka.csr kafka.ext kafka.pem
chmod 644 ./*
echo "made $(ls | tr '\n' ' ')in $dir"
