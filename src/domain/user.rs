//! Users as `UpsertUsers` receives them.

use super::event::MAX_ID_LEN;

/// Longest username and email (bytes).
pub const MAX_USERNAME_LEN: usize = 256;
pub const MAX_EMAIL_LEN: usize = 320;

/// A validated user: a non-empty client id, optional username and email
/// (`None` leaves the stored value as it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserUpsert {
    pub user_id: String,
    pub username: Option<String>,
    pub email: Option<String>,
}

/// Checks one user; the message says which field is wrong.
pub fn validate_user(
    user_id: String,
    username: String,
    email: String,
) -> Result<UserUpsert, String> {
    if user_id.is_empty() {
        return Err("user_id is empty".into());
    }
    for (field, value, limit) in [
        ("user_id", &user_id, MAX_ID_LEN),
        ("username", &username, MAX_USERNAME_LEN),
        ("email", &email, MAX_EMAIL_LEN),
    ] {
        if value.len() > limit {
            return Err(format!(
                "{field} is {} bytes long; the limit is {limit}",
                value.len()
            ));
        }
        if value.contains('\0') {
            return Err(format!("{field} contains a NUL character"));
        }
    }
    if !email.is_empty() {
        let valid = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        }) && !email.chars().any(char::is_whitespace);
        if !valid {
            return Err(format!(
                "email `{email}` is not an address such as ada@example.com"
            ));
        }
    }
    Ok(UserUpsert {
        user_id,
        username: (!username.is_empty()).then_some(username),
        email: (!email.is_empty()).then_some(email),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_validate() {
        assert!(validate_user("u".into(), String::new(), String::new()).is_ok());
        assert!(validate_user(String::new(), String::new(), String::new()).is_err());
        assert!(validate_user("u".into(), String::new(), "not-an-email".into()).is_err());
        let ok = validate_user("u".into(), "ada".into(), "ada@example.com".into()).unwrap();
        assert_eq!(ok.email.as_deref(), Some("ada@example.com"));
    }
}
