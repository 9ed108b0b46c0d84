# Sourced by the load scripts in this folder: the upstream they all proxy
# to, an nginx answering a fixed 100-byte body at every path.

# upstream_conf DIR PORT [H2C_PORT]: writes DIR/nginx.conf (pid, logs and
# temp files under DIR) for an upstream on 127.0.0.1:PORT, and on H2C_PORT
# the same over h2c (HTTP/2 with prior knowledge, as ZITADEL serves).
upstream_conf() {
  local dir="$1" port="$2" h2c="${3:-}" body
  body=$(printf 'x%.0s' $(seq 99))   # 99 x + "\n" = 100 bytes
  mkdir -p "$dir/tmp"
  cat > "$dir/nginx.conf" <<CONF
# The upstream: a fixed 100-byte body at every path.
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 10000; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { default_type text/plain; return 200 "$body\n"; }
  }
$( [ -n "$h2c" ] && cat <<H2C
  server {
    listen 127.0.0.1:$h2c http2 backlog=4096;
    # Tells which port answered: run.sh checks it through each proxy.
    location / { default_type text/plain; add_header X-Upstream h2c; return 200 "$body\n"; }
  }
H2C
)
}
CONF
}
