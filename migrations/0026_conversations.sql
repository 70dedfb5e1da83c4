-- Conversations (seed 002): a person or an agent talks with a model through one of the
-- tenant's LLM connections; the model may call tools as the sender. A conversation is
-- read by its participants (the person, whichever of their keys they use; or the agent)
-- and tenant admins. `busy_until` keeps two replies from being written at once.
CREATE TABLE conversations (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id         uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title             text        NOT NULL DEFAULT '' CHECK (length(title) <= 200),
    owner_kind        text        NOT NULL,
    owner_id          uuid        NOT NULL,
    owner_name        text        NOT NULL,
    -- The person behind the owner (a user, the local owner, an API key's user); null for
    -- an agent.
    person_id         uuid,
    connection        text,
    model             text,
    system_prompt     text        NOT NULL DEFAULT '' CHECK (length(system_prompt) <= 20000),
    -- The tools the model is offered (null: every tool the sender may use).
    tools             text[],
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    total_tokens      bigint      NOT NULL DEFAULT 0,
    message_count     integer     NOT NULL DEFAULT 0,
    busy_until        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX conversations_person ON conversations (tenant_id, person_id, updated_at DESC);
CREATE INDEX conversations_owner ON conversations (tenant_id, owner_id, updated_at DESC);
CREATE INDEX conversations_recent ON conversations (tenant_id, updated_at DESC);

CREATE TABLE conversation_messages (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         uuid        NOT NULL,
    conversation_id   uuid        NOT NULL,
    role              text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content           text        NOT NULL DEFAULT '',
    -- assistant: the calls the model asked for ({id, name, arguments}).
    tool_calls        jsonb       NOT NULL DEFAULT '[]',
    -- tool: the call it answers.
    tool_call_id      text,
    tool_name         text,
    is_error          boolean     NOT NULL DEFAULT false,
    -- assistant: `error` when no reply could be had (the provider failed, the reply took
    -- too long), with what happened in `error`.
    status            text        NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'error')),
    error             text,
    sender_name       text,
    prompt_tokens     bigint      NOT NULL DEFAULT 0,
    completion_tokens bigint      NOT NULL DEFAULT 0,
    total_tokens      bigint      NOT NULL DEFAULT 0,
    duration_ms       bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX conversation_messages_order ON conversation_messages (conversation_id, id);
