# agentd's helper for bash sandboxes, read through BASH_ENV.
#   agentd_result '{"ok": true}'
# records one JSON value as the sandbox's result (the last call wins).
agentd_result() {
    printf '%s\n' "$1" >&"${AGENTD_RESULT_FD:-3}"
}
