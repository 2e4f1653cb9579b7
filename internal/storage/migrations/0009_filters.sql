-- Filters uploaded with POST /user/{userId}/filter. Ids are per user.
CREATE TABLE user_filters (
    user_id      TEXT NOT NULL,
    filter_id    BIGINT NOT NULL,
    filter_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
