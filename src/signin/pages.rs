//! The sign-in, consent and error pages: plain HTML forms, no script, no front-end build.
//! Every value from a request or the store is escaped.

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;\
color:#1b1b1b;line-height:1.5}h1{font-size:1.4rem}label{display:block;margin-top:1rem;font-weight:600}\
input[type=text],input[type=email],input[type=password]{width:100%;padding:.5rem;font-size:1rem;\
box-sizing:border-box;border:1px solid #767676;border-radius:4px}\
button{margin-top:1.25rem;margin-right:.5rem;padding:.55rem 1.1rem;font-size:1rem;border-radius:4px;\
border:1px solid #1a4fb5;background:#1a4fb5;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#1a4fb5}.error{color:#a40000;font-weight:600}\
fieldset{border:1px solid #c8c8c8;border-radius:4px;margin-top:1rem}\
fieldset label{font-weight:400;margin-top:.4rem}small{color:#4a4a4a}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · agentcrm</title><style>{STYLE}</style></head>\
         <body><main>{body}</main></body></html>",
        escape(title)
    )
}

/// Hidden inputs carrying the authorization request and the CSRF token.
pub fn hidden(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect()
}

pub struct SigninPage<'a> {
    pub client_name: &'a str,
    pub hidden: String,
    pub error: Option<&'a str>,
    pub email: &'a str,
    pub organization: &'a str,
    /// Ask for the organization (the email is known in several).
    pub ask_organization: bool,
}

pub fn signin(p: &SigninPage) -> String {
    let error = p.error.map_or_else(String::new, |e| {
        format!(
            "<p class=\"error\" role=\"alert\" id=\"error\">{}</p>",
            escape(e)
        )
    });
    let organization = if p.ask_organization || !p.organization.is_empty() {
        format!(
            "<label for=\"organization\">Organization</label>\
             <input type=\"text\" id=\"organization\" name=\"organization\" value=\"{}\" \
             autocomplete=\"organization\" required>",
            escape(p.organization)
        )
    } else {
        String::new()
    };
    page(
        "Sign in",
        &format!(
            "<h1>Sign in to agentcrm</h1>\
             <p><strong>{client}</strong> wants to connect to your agentcrm account.</p>{error}\
             <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
             <input type=\"hidden\" name=\"action\" value=\"signin\">{organization}\
             <label for=\"email\">Email</label>\
             <input type=\"email\" id=\"email\" name=\"email\" value=\"{email}\" autocomplete=\"username\" required autofocus>\
             <label for=\"password\">Password</label>\
             <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>\
             <h2>Or through your organization</h2>\
             <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
             <input type=\"hidden\" name=\"action\" value=\"federate\">\
             <label for=\"federate-organization\">Organization</label>\
             <input type=\"text\" id=\"federate-organization\" name=\"organization\" \
             autocomplete=\"organization\" required>\
             <button type=\"submit\">Continue to your organization's sign-in</button></form>",
            client = escape(p.client_name),
            hidden = p.hidden,
            email = escape(p.email),
        ),
    )
}

pub struct ConsentPage<'a> {
    pub client_name: &'a str,
    pub redirect_host: &'a str,
    pub person: &'a str,
    pub organization: &'a str,
    /// (scope, plain words), every one ticked.
    pub scopes: Vec<(&'a str, &'static str)>,
    pub hidden: String,
    pub error: Option<&'a str>,
}

pub fn consent(p: &ConsentPage) -> String {
    let boxes: String = p
        .scopes
        .iter()
        .map(|(scope, words)| {
            format!(
                "<label><input type=\"checkbox\" name=\"grant\" value=\"{s}\" checked> {w} \
                 <small>({s})</small></label>",
                s = escape(scope),
                w = escape(words)
            )
        })
        .collect();
    let error = p.error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    page(
        "Allow access",
        &format!(
            "<h1>Allow {client} to use agentcrm?</h1>\
             <p>Signed in as <strong>{person}</strong> ({org}). After you allow it, \
             <strong>{client}</strong> is sent back to <strong>{host}</strong> and can act for you \
             within what you tick below, until you or an admin disconnect it.</p>{error}\
             <form method=\"post\" action=\"/oauth/authorize\">{hidden}\
             <fieldset><legend>It may</legend>{boxes}</fieldset>\
             <button type=\"submit\" name=\"action\" value=\"consent\">Allow</button>\
             <button type=\"submit\" name=\"action\" value=\"deny\" class=\"secondary\">Deny</button>\
             </form>",
            client = escape(p.client_name),
            person = escape(p.person),
            org = escape(p.organization),
            host = escape(p.redirect_host),
            hidden = p.hidden,
        ),
    )
}

pub fn invite(email: &str, organization: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    });
    page(
        "Set your password",
        &format!(
            "<h1>Set your password</h1><p>For <strong>{}</strong> in <strong>{}</strong>. \
             At least 12 characters; a few words you will remember work well.</p>{error}\
             <form method=\"post\">{}\
             <label for=\"password\">Password</label>\
             <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"12\" autofocus>\
             <label for=\"confirm\">The same again</label>\
             <input type=\"password\" id=\"confirm\" name=\"confirm\" autocomplete=\"new-password\" required minlength=\"12\">\
             <button type=\"submit\">Set password</button></form>",
            escape(email),
            escape(organization),
            hidden(&[("csrf", csrf)]),
        ),
    )
}

pub fn message(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><p role=\"status\">{}</p>",
            escape(title),
            escape(message)
        ),
    )
}

pub fn error(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><p role=\"alert\">{}</p><p>Nothing was shared with the client. \
             Go back to the application and try connecting again.</p>",
            escape(title),
            escape(message)
        ),
    )
}

/// What a scope lets a client do, in plain words.
pub fn describe(scope: &str) -> &'static str {
    match scope {
        "customers:read" => "Read customer records",
        "customers:write" => "Create and change customer records",
        "customers:delete" => "Delete customers",
        "customers:export" => "Export customer records",
        "interactions:read" => "Read interactions and notes",
        "interactions:write" => "Log interactions and add notes",
        "search" => "Search customers and interactions",
        "bulk" => "Change many customers at once",
        "reports" => "Run reports",
        "handoff" => "Hand conversations to people and read the approval queue",
        "handoff:decide" => "Approve or reject held actions",
        "invoices:read" => "Read quotes and invoices",
        "invoices:write" => "Create and change quotes and invoices",
        "workflows:read" => "Read workflows and their runs",
        "workflows:write" => "Create and change workflows",
        "workflows:execute" => "Run workflows",
        "agents:read" => "Read agents and their runs",
        "agents:write" => "Create and change agents",
        "agents:execute" => "Run agents",
        "connections:read" => "Read connections to outside services",
        "connections:write" => "Create and change connections to outside services",
        "webhooks:manage" => "Manage webhooks",
        "audit:read" => "Read the audit trail",
        "admin" => "Administer the organization (people, agents, keys)",
        _ => "Another permission",
    }
}
