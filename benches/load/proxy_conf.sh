# Sourced by benches/load/run.sh and benches/instructions/compare.sh: the
# forwarding fields and request id that nginx and HAProxy set in every
# comparison with steer, so that all three do the same work per request.

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
