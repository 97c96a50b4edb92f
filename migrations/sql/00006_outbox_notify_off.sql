-- +goose Up
-- The relay finds new rows by probing (relay/doc.go, "Wake-ups"): the NOTIFY trigger is off by
-- default, because a notifying commit takes PostgreSQL's global notify lock and producers then
-- commit one at a time (measured: 0.16-0.75 of their rate). A relay run with Listen (outbox-relay
-- --listen) wants it back on: ALTER TABLE "outbox_messages" ENABLE TRIGGER "outbox_messages_notify".
ALTER TABLE "outbox_messages" DISABLE TRIGGER "outbox_messages_notify";

-- +goose Down
ALTER TABLE "outbox_messages" ENABLE TRIGGER "outbox_messages_notify";
