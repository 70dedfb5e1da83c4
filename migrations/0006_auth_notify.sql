-- Any change to who may do what (made by agentcrm or by hand) tells every agentcrm process
-- to forget the credentials it resolved (see src/access/cache.rs). Delivered at commit.
CREATE FUNCTION agentcrm_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agentcrm_auth', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_auth_changed AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER api_keys_auth_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER users_auth_changed AFTER UPDATE OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER revoked_tokens_auth_changed AFTER INSERT ON revoked_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER tenants_auth_changed AFTER DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
