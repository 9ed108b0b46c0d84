# Sourced by benches/load/run.sh and benches/instructions/compare.sh:
# what nginx and HAProxy are configured with in every comparison with
# steer, so that all three do the same work per request (the forwarding
# fields and request id above all).

# nginx_temp_paths DIR: nginx's temporary files in the run's directory
# DIR, not under its compiled-in prefix.
nginx_temp_paths() {
  local kind
  for kind in client_body proxy fastcgi uwsgi scgi; do
    echo "  ${kind}_temp_path $1;"
  done
}

# nginx_proxy_http1 UPSTREAM: a location's HTTP/1.1 keep-alive proxying to
# UPSTREAM with the client's Host, and the forwarding fields.
nginx_proxy_http1() {
  cat <<EOT
      proxy_pass http://$1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
EOT
  nginx_forwarding proxy
}

# nginx_forwarding PREFIX: directives for an nginx location (PREFIX:
# proxy for proxy_pass, grpc for grpc_pass).
nginx_forwarding() {
  cat <<EOT
      ${1}_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      ${1}_set_header X-Forwarded-Proto \$scheme;
      ${1}_set_header X-Forwarded-Host \$host;
      ${1}_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\$host";
      ${1}_set_header X-Request-ID \$request_id;
      add_header X-Request-ID \$request_id always;
EOT
}

# haproxy_forwarding: directives for a HAProxy frontend.
haproxy_forwarding() {
  cat <<'EOT'
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header Forwarded "for=%[src];proto=%[req.hdr(x-forwarded-proto)];host=%[req.hdr(host)]"
  unique-id-format %[uuid()]
  unique-id-header X-Request-ID
  http-after-response set-header X-Request-ID %[unique-id]
EOT
}
