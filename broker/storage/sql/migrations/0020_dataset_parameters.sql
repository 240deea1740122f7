-- Dataset parameters (issue 11): what a provider needs beyond the subject (the month and year of a quotient
-- familial, a fiscal year, a month of effectifs), as the consumer sent them and the schema's x-parameters checked
-- them. Kept in the access log beside the fields asked, so an audit sees which month was asked about; they are not
-- in the transparency log's v2 leaf, whose shape is fixed. NULL: none sent, or an entry older than this column.
ALTER TABLE access_log ADD COLUMN parameters jsonb;
