package bpf

//go:generate go tool bpf2go -tags linux -target amd64 -type exe_key -type app_key -type app_info -type dest_key -type cidr_key -type pending_key -type report_key -type guard -type sock_state -type conn_event -type dns_event -type config -type verdict -type reason -type event_kind -type mode -type fail_mode -type counter aegis aegis.bpf.c -- -I. -Wall -Werror
