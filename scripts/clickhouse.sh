#!/usr/bin/env bash
# Starts a throw-away ClickHouse server for the analytics tests (and local development).
#
#   scripts/clickhouse.sh [DATA_DIR]        default DATA_DIR: /tmp/handoff-ch
#   scripts/clickhouse.sh --stop [DATA_DIR]
#
# Installs Debian's clickhouse-server when it is missing, writes a config of its own under DATA_DIR (so it
# never touches /etc/clickhouse-server or /var/lib/clickhouse), listens on loopback only, runs as a
# background daemon and waits until `SELECT 1` answers over HTTP. Idempotent: a server already answering
# on the port is left alone. Ports: CH_HTTP_PORT (8123), CH_TCP_PORT (9000).
set -euo pipefail

stop=0
if [[ "${1:-}" == "--stop" ]]; then
    stop=1
    shift
fi
DATA_DIR="${1:-/tmp/handoff-ch}"
HTTP_PORT="${CH_HTTP_PORT:-8123}"
TCP_PORT="${CH_TCP_PORT:-9000}"
URL="http://127.0.0.1:${HTTP_PORT}/"

answers() {
    # `SELECT 1` over HTTP; curl when present, else bash's /dev/tcp (minimal CI images lack curl).
    if command -v curl >/dev/null 2>&1; then
        [[ "$(curl -fsS --max-time 2 "${URL}?query=SELECT%201" 2>/dev/null)" == "1" ]]
    else
        exec 3<>"/dev/tcp/127.0.0.1/${HTTP_PORT}" 2>/dev/null || return 1
        printf 'GET /?query=SELECT%%201 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        local body
        body="$(timeout 2 cat <&3 | tail -n 1)"
        exec 3<&-
        [[ "${body}" == "1" ]]
    fi
}

if [[ ${stop} == 1 ]]; then
    if [[ -f "${DATA_DIR}/clickhouse.pid" ]]; then
        kill "$(cat "${DATA_DIR}/clickhouse.pid")" 2>/dev/null || true
        rm -f "${DATA_DIR}/clickhouse.pid"
        echo "clickhouse stopped (${DATA_DIR})"
    fi
    exit 0
fi

if answers; then
    echo "clickhouse already answering on ${URL}"
    exit 0
fi

if ! command -v clickhouse-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/clickhouse-server ]]; then
    echo "installing clickhouse-server from the distribution"
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
    ${SUDO} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${SUDO} apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
fi
SERVER="$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)"

mkdir -p "${DATA_DIR}/data" "${DATA_DIR}/tmp" "${DATA_DIR}/user_files" "${DATA_DIR}/log" "${DATA_DIR}/format_schemas"
cat >"${DATA_DIR}/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>${DATA_DIR}/log/clickhouse-server.log</log>
        <errorlog>${DATA_DIR}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <http_port>${HTTP_PORT}</http_port>
    <tcp_port>${TCP_PORT}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>${DATA_DIR}/data/</path>
    <tmp_path>${DATA_DIR}/tmp/</tmp_path>
    <user_files_path>${DATA_DIR}/user_files/</user_files_path>
    <format_schema_path>${DATA_DIR}/format_schemas/</format_schema_path>
    <users_config>${DATA_DIR}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
XML
cat >"${DATA_DIR}/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
XML

echo "starting clickhouse-server (data ${DATA_DIR}, http ${HTTP_PORT}, native ${TCP_PORT})"
# --daemon forks and writes the pid file; the server refuses to run as root only when asked to, so root is fine.
"${SERVER}" --config-file="${DATA_DIR}/config.xml" --pid-file="${DATA_DIR}/clickhouse.pid" --daemon

for _ in $(seq 1 120); do
    if answers; then
        echo "clickhouse answering on ${URL}"
        exit 0
    fi
    sleep 0.5
done
echo "clickhouse did not answer on ${URL} within 60s; log:" >&2
tail -n 40 "${DATA_DIR}/log/clickhouse-server.err.log" >&2 || true
exit 1
