-- Agents' field rules, row conditions and grants are cached per process beside the
-- credentials: a change to any of them fires the same NOTIFY, whoever made it and however.
CREATE TRIGGER field_rules_auth_changed AFTER INSERT OR UPDATE OR DELETE ON field_rules
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER row_conditions_auth_changed AFTER INSERT OR UPDATE OR DELETE ON row_conditions
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
CREATE TRIGGER grants_auth_changed AFTER INSERT OR UPDATE OR DELETE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION agentcrm_auth_changed();
